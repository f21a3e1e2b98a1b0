"""The size table of a run: every (tensor, setting) pair a search space allows, coded once at the
start of the run (in parallel worker processes) into the run's size cache, laid out as an array
[tensors × columns] so that the tensors.bin bytes of a genome — or of a batch of genomes — is one
vectorised gather and sum.

A column is the index of the setting a tensor takes: for a decoder linear the combination of its
unit's genes (bits × rescale × sparsity × ...), for the embedding/head its bits choice; norms and
biases are always kept (column 0). A drop gene zeroes the tensors it removes. The table's sums equal
SizeModel.tensor_bytes exactly (tests check them against written artifacts); the rest of an
artifact (manifest, config, tokenizer files) depends on the config's layout and is taken from the
SizeModel's memoised manifest path, which after the table is filled never encodes a tensor.
"""

from __future__ import annotations

import dataclasses
import itertools
import operator
import multiprocessing
import os
from dataclasses import dataclass
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import torch

from evo.compress.apply import compress_tensor
from evo.compress.coding import encode_tensor
from evo.compress.config import ATTENTION_ROLES, KEPT, MLP_ROLES, CompressionConfig, LayerConfig
from evo.compress.plan import stats_for
from evo.compress.settings import TensorSetting
from evo.compress.size import SizeEntry, SizeKey, SizeModel
from evo.compress.structure import is_replaced, replaced_modules
from evo.errors import EvoError
from evo.search.genome_sizer import GenomeSizer
from evo.types import ModelInfo

TableProgress = Callable[[int, int], None]  # (pairs coded, pairs total)
GENOME_PARTS = 1 << 18  # artifact_bytes' memoised (layer, position, genes) parts; beyond this they are forgotten

_WORK: dict = {}  # what forked workers read: the base weights and activation statistics


def _quantize_pair(source: str, setting: TensorSetting, device: torch.device | str = "cpu"):
    """The codes of one pair computed on `device` (a size key names the device kind: GPU and CPU
    kernels may round a step differently), returned on the CPU."""
    weights, stats = _WORK["weights"], _WORK["stats"]
    act = stats_for(stats, source, setting)
    q = compress_tensor(weights[source].to(device), setting, act).quantized
    return dataclasses.replace(q, **{part: None if value is None else value.to("cpu")
                                     for part, value in (("codes", q.codes), ("scales", q.scales),
                                                         ("zeros", q.zeros))})


def _encode_pair(source: str, setting: TensorSetting) -> SizeEntry:
    return SizeEntry.from_encoded(encode_tensor(_quantize_pair(source, setting)))


def _encode_pair_tuple(pair: tuple[str, TensorSetting]) -> SizeEntry:
    return _encode_pair(*pair)


def _encode_quantized(quantized) -> SizeEntry:
    return SizeEntry.from_encoded(encode_tensor(quantized))


def encode_pairs(pairs: list[tuple[str, TensorSetting]], weights, stats) -> list[SizeEntry]:
    """Size entries of (tensor, setting) pairs coded in this process from `weights` (a Ray actor's copy)."""
    _WORK.update(weights=weights, stats=stats)
    try:
        return [_encode_pair(*pair) for pair in pairs]
    finally:
        _WORK.clear()


def _worker_init() -> None:
    torch.set_num_threads(1)  # one process per core: threads inside would oversubscribe


def default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


class SizeTable:
    """Exact tensors.bin bytes of any genome of `space` on `info`, from a [tensors × columns] table.

    genes: the space's genome layout for the model (space.genes(info)).
    """

    def __init__(self, space, info: ModelInfo, size_model: SizeModel) -> None:
        self.space = space
        self.info = info
        self.size_model = size_model
        self.genes = space.genes(info)
        unit_names = [name for name, _ in space.unit_genes]
        self.unit_settings: list[TensorSetting] = [
            space.setting(dict(zip(unit_names, values)))
            for values in itertools.product(*(values for _, values in space.unit_genes))
        ]
        # genes of each unit, in unit_genes order; mixed radix strides give the combination index
        units = max((g.unit for g in self.genes if g.unit is not None), default=-1) + 1
        unit_genes = np.zeros((max(units, 1), len(unit_names)), dtype=np.int64)
        for i, gene in enumerate(self.genes):
            if gene.unit is not None:
                unit_genes[gene.unit, unit_names.index(gene.kind)] = i
        sizes = [len(values) for _, values in space.unit_genes]
        strides = [int(np.prod(sizes[k + 1:])) for k in range(len(sizes))]
        self._unit_genes = unit_genes
        self._strides = np.asarray(strides, dtype=np.int64)
        drop_gene = {g.layer: i for i, g in enumerate(self.genes) if g.kind == "drop"}
        gene_index = {g.name: i for i, g in enumerate(self.genes)}
        unit_of = {(g.layer, g.name.split(".")[1] if space.granularity == "group" else "all"): g.unit
                   for g in self.genes if g.unit is not None}

        names: list[str] = []
        columns: list[list[TensorSetting]] = []  # per tensor, its setting by column
        kind: list[int] = []  # 0 fixed column 0, 1 unit combination, 2 a gene's choice index
        source_of: list[int] = []  # unit index (kind 1) or gene index (kind 2)
        layer_of: list[int] = []  # position of the layer's drop gene, -1 outside decoder layers
        keep_rows: list[list[bool]] = []  # per tensor, kept under each drop choice
        n_drops = len(space.drops)
        for layer in info.layers:
            linears = {lin.name: lin.role for lin in layer.linears}
            removed = [replaced_modules(layer, drop) for drop in space.drops]
            # plan_model's order within a layer: linears, then norms and biases
            for name in [lin.name for lin in layer.linears] + [name for name, _ in layer.other_tensors]:
                names.append(name)
                keep_rows.append([not is_replaced(name, modules) for modules in removed])
                layer_of.append(drop_gene[layer.index])
                role = linears.get(name)
                if role is None:
                    columns.append([KEPT]); kind.append(0); source_of.append(0)
                    continue
                group = "all" if space.granularity == "layer" else (
                    "attention" if role in ATTENTION_ROLES else "mlp" if role in MLP_ROLES else None)
                if group is None:  # a linear of neither block takes the config's default: kept
                    columns.append([KEPT]); kind.append(0); source_of.append(0)
                    continue
                columns.append(list(self.unit_settings)); kind.append(1); source_of.append(unit_of[(layer.index, group)])
        for tensor in info.non_decoder:
            names.append(tensor.name)
            keep_rows.append([True] * n_drops)
            layer_of.append(-1)
            gene = {"embedding": "embedding.bits", "head": "head.bits"}.get(tensor.role)
            if gene in gene_index:
                i = gene_index[gene]
                columns.append([space.setting({"bits": b}, key=gene) for b in self.genes[i].choices])
                kind.append(2); source_of.append(i)
            else:
                columns.append([KEPT]); kind.append(0); source_of.append(0)
        self.names = names
        self.columns = columns
        self._kind = np.asarray(kind, dtype=np.int64)
        self._source = np.asarray(source_of, dtype=np.int64)
        self._layer = np.asarray(layer_of, dtype=np.int64)
        self._keep = np.asarray(keep_rows, dtype=bool)
        self.table = np.zeros((len(names), max(len(c) for c in columns)), dtype=np.int64)  # unused columns: 0
        self.filled = False
        self._rows = np.arange(len(names))
        # the genome positions that decide each layer's part of an artifact (its unit genes and drop) and
        # the rest (embedding, head): the keys of artifact_bytes' memo of (segment, config JSON item) parts
        self._layer_genes = [(layer, _getter([i for i, g in enumerate(self.genes) if g.layer == layer.index]))
                             for layer in info.layers]
        self._other_genes = _getter([i for i, g in enumerate(self.genes) if g.layer is None])
        self._parts: dict[tuple, tuple] = {}
        # what a layer's entry is built from without decoding the genome (space.decode's per-layer rule):
        # per layer its drop gene and the units of its attention and MLP linears (one unit per layer at
        # layer granularity); the embedding's and head's settings by their genes' choices
        unit_positions = [[int(i) for i in row] for row in unit_genes]
        strides_list = [int(s) for s in strides]
        groups = ("all", "all") if space.granularity == "layer" else ("attention", "mlp")
        self._entry_genes = {layer.index: (drop_gene[layer.index],
                                           *(list(zip(unit_positions[unit_of[(layer.index, g)]], strides_list))
                                             for g in groups))
                             for layer in info.layers}
        self._embedding = (gene_index["embedding.bits"],
                           [space.setting({"bits": b}, key="embedding.bits")
                            for b in self.genes[gene_index["embedding.bits"]].choices])
        self._head = None if "head.bits" not in gene_index else (
            gene_index["head.bits"],
            [space.setting({"bits": b}, key="head.bits") for b in self.genes[gene_index["head.bits"]].choices])
        self._checked_drops: set[tuple[int, str]] = set()  # (layer, drop) pairs validate_against accepted
        # exceeds' bounds of the manifest's settings table: a bit per setting key, each key's shortest and
        # longest item, and (low, high) by the keys' bits of a genome
        self._key_bits: dict[str, int] = {}
        self._key_lengths: dict[str, tuple[int, int]] = {}
        self._key_length_list: list[tuple[int, int, int]] = []
        self._settings_bounds: dict[int, tuple[int, int]] = {}
        # bytes of every artifact beside its tensors, manifest and config.json (exceeds' lower bound)
        self.fixed_bytes = sum(size_model.metadata.fixed_files.values())
        self.fast_sizes = True  # size and check genomes from the filled table's arrays (GenomeSizer)
        self._genome_sizer: GenomeSizer | None = None

    def sharing(self, size_model: SizeModel) -> SizeTable:
        """A table of the same space and model whose filled array is this one's, sizing the rest of an
        artifact with `size_model` (e.g. SizeModel.fresh(): a benchmark's runs side by side)."""
        twin = SizeTable(self.space, self.info, size_model)
        twin.table = self.table
        twin.filled = self.filled
        twin._sizer()  # its arrays made now (setup), from its own size model's rows
        return twin

    # --- building ------------------------------------------------------------------------------------

    def pairs(self) -> list[tuple[str, TensorSetting]]:
        """Every distinct (tensor, setting) the space allows, in table order."""
        seen: dict[tuple[str, TensorSetting], None] = {}
        for name, settings in zip(self.names, self.columns):
            for setting in settings:
                seen.setdefault((name, setting), None)
        return list(seen)

    def fill(self, *, workers: int | None = None, progress: TableProgress | None = None, pool=None) -> int:
        """Code every pair missing from the size cache (workers processes, all cores by default, or a
        WorkerPool's Ray actors) and fill the table. Returns how many pairs were coded here. Results
        do not depend on workers."""
        model = self.size_model
        pairs = self.pairs()
        missing = [pair for pair in pairs if not self.is_coded(*pair)]
        self.code(missing, workers=workers, progress=progress, already=len(pairs) - len(missing), pool=pool)
        for row, (name, settings) in enumerate(zip(self.names, self.columns)):
            for column, setting in enumerate(settings):
                self.table[row, column] = model._entry(name, setting).compressed_bytes
                model.prepare_row(name, setting)  # its manifest entry's pieces, made now rather than mid-search
        self.filled = True
        self._genome_sizer = None
        self._sizer()  # the arrays made now (a second or so on the default space), not in the first check
        return len(missing)

    def code(self, pairs: list[tuple[str, TensorSetting]], *, workers: int | None = None,
             progress: TableProgress | None = None, already: int = 0, pool=None) -> None:
        """Code `pairs` into the size cache, in `workers` processes (all cores by default) or on a
        WorkerPool's actors (`pool`); the entries are stored in the pairs' order whatever the
        workers (deterministic). A size model on a GPU has its codes computed on that GPU (its
        keys name the device kind), the entropy coding in `workers` processes; the pool is unused."""
        workers = default_workers() if workers is None else workers
        if workers < 1:
            raise EvoError("--size-workers must be 1 or more")
        total = already + len(pairs)
        done = already
        if progress is not None:
            progress(done, total)
        if not pairs:
            return
        _WORK.update(weights=self.size_model.weights, stats=self.size_model.stats)
        device = self.size_model.device
        try:
            if device.type != "cpu":
                # the keys name the size model's device (its kernels may round a step otherwise than
                # a CPU's): quantize there, in this process, and encode on the CPU in `workers` processes
                for pair, entry in zip(pairs, self._code_on(device, pairs, workers)):
                    self._store(pair, entry)
                    done += 1
                    if progress is not None:
                        progress(done, total)
            elif pool is not None:  # the search's Ray actors, each with its own copy of the weights
                for pair, entry in zip(pairs, pool.encode_pairs(pairs)):
                    self._store(pair, entry)
                    done += 1
                    if progress is not None:
                        progress(done, total)
            elif workers == 1 or len(pairs) == 1:
                for pair in pairs:
                    self._store(pair, _encode_pair(*pair))
                    done += 1
                    if progress is not None:
                        progress(done, total)
            else:
                # fork: workers share the parent's weights without pickling them
                context = multiprocessing.get_context("fork")
                with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_worker_init) as pool:
                    chunk = max(1, min(64, len(pairs) // (8 * workers)))
                    results = pool.map(_encode_pair_tuple, pairs, chunksize=chunk)  # in order
                    for pair, entry in zip(pairs, results):
                        self._store(pair, entry)
                        done += 1
                        if progress is not None:
                            progress(done, total)
        finally:
            _WORK.clear()
        self.size_model.sizes_computed += len(pairs)

    @staticmethod
    def _code_on(device: torch.device, pairs: list[tuple[str, TensorSetting]], workers: int):
        """Size entries of `pairs` in order, their codes computed on `device` (this process) a batch at
        a time, encoded in `workers` forked processes (which touch no GPU)."""
        if workers == 1 or len(pairs) == 1:
            for pair in pairs:
                yield _encode_quantized(_quantize_pair(*pair, device))
            return
        context = multiprocessing.get_context("fork")
        batch = 8 * workers  # codes held at once: two batches' worth, not the whole space's
        with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_worker_init) as pool:
            encoding: list = []
            for start in range(0, len(pairs), batch):  # the next batch is quantized while one is encoded
                quantized = [_quantize_pair(*pair, device) for pair in pairs[start:start + batch]]
                done, encoding = encoding, [pool.submit(_encode_quantized, q) for q in quantized]
                yield from (future.result() for future in done)
            yield from (future.result() for future in encoding)

    def _key(self, source: str, setting: TensorSetting) -> SizeKey:
        return self.size_model.size_key(source, setting)  # compress_model's key (gptq: with the Hessians')

    def is_coded(self, source: str, setting: TensorSetting) -> bool:
        """Whether the run's size cache holds this pair's bytes under every coder."""
        entry = self.size_model.size_cache.get(self._key(source, setting))
        return entry is not None and bool(entry.frame_bytes) and set(entry.frame_bytes) == set(entry.coders)

    def _store(self, pair: tuple[str, TensorSetting], entry: SizeEntry) -> None:
        self.size_model.size_cache.put(self._key(*pair), entry)

    # --- sizes ---------------------------------------------------------------------------------------

    def columns_of(self, genomes: np.ndarray) -> np.ndarray:
        """[batch × tensors] column of each tensor under each genome."""
        combos = (genomes[:, self._unit_genes] * self._strides).sum(-1)  # [batch × units]
        gene_values = genomes[:, self._source]
        unit_values = combos[:, np.where(self._kind == 1, self._source, 0)]
        return np.where(self._kind == 1, unit_values, np.where(self._kind == 2, gene_values, 0))

    def tensor_bytes_many(self, genomes: Sequence[Sequence[int]] | np.ndarray) -> np.ndarray:
        """tensors.bin bytes of each genome of a batch: one gather and one sum."""
        if not self.filled:
            raise EvoError("the size table is not filled: call fill() first")
        batch = np.asarray(genomes, dtype=np.int64).reshape(-1, len(self.genes))
        columns = self.columns_of(batch)
        drops = np.where(self._layer >= 0, batch[:, np.maximum(self._layer, 0)], 0)  # [batch × tensors]
        kept = self._keep[self._rows, drops]
        return (self.table[self._rows, columns] * kept).sum(-1)

    def tensor_bytes(self, genome: Sequence[int]) -> int:
        return int(self.tensor_bytes_many([genome])[0])

    def exceeds(self, genome: Sequence[int], budget_bytes: int) -> bool:
        """artifact_bytes(genome) > budget_bytes, exactly: from the filled table's arrays (GenomeSizer: the
        tensors plus the files no config changes decide first, else the whole count, a fixed number of
        numpy gathers); a genome they do not cover takes the parts' path (which raises for a bad one)."""
        sizer = self._sizer()
        if sizer is not None:
            over = sizer.exceeds(genome, budget_bytes)
            if over is not None:
                return over
        return self.exceeds_by_parts(genome, budget_bytes)

    def exceeds_by_parts(self, genome: Sequence[int], budget_bytes: int) -> bool:
        """exceeds() by the memoised parts: the tensors plus the files no config changes (tokenizer,
        generation config) are a lower bound of the artifact: when they already exceed the
        budget the tensors' sum decides; otherwise bounds() (exact but for the manifest's offset digits
        and settings items, a few kB apart) decide, and only a genome within them is sized whole."""
        kept, segments, config_length, sums = self._plan(genome)
        if sums.tensor_bytes + self.fixed_bytes > budget_bytes:
            return True
        low, high = self._bounds(kept, config_length, sums)
        if low > budget_bytes:
            return True
        if high <= budget_bytes:
            return False
        return self.size_model.size_of_plan(kept, segments, config_length).total_bytes > budget_bytes

    def artifact_bytes(self, genome: Sequence[int]) -> int:
        """The whole artifact's bytes: its tensors plus the config's manifest and metadata files (exactly
        SizeModel.artifact_bytes of the decoded config; the tensors' bytes are the table's entries), from
        the filled table's arrays where they cover the genome, else by the memoised parts."""
        sizer = self._sizer()
        if sizer is not None:
            size = sizer.artifact_bytes(genome)
            if size is not None:
                return size
        return self.artifact_bytes_by_parts(genome)

    def artifact_bytes_by_parts(self, genome: Sequence[int]) -> int:
        """artifact_bytes() from the size model's memoised per-layer parts (raises for a genome that does
        not fit the space or the model)."""
        kept, segments, config_length, _ = self._plan(genome)
        return self.size_model.size_of_plan(kept, segments, config_length).total_bytes

    def _sizer(self) -> GenomeSizer | None:
        """The arrays of the filled table (built on first use: a twin of sharing() builds its own rows)."""
        if not (self.filled and self.fast_sizes):
            return None
        if self._genome_sizer is None:
            self._genome_sizer = GenomeSizer(self)
        return self._genome_sizer

    def _plan(self, genome: Sequence[int]) -> tuple[tuple[int, ...], list, int, _Sums]:
        """(kept layers, the size model's memoised segments, the length of the config's JSON, the sums the
        bounds need) of a genome,
        looked up by each layer's genes. A part not seen before is built from its own genes (the layer's
        entry as space.decode makes it), never by decoding the whole genome (tests check both agree)."""
        genome = tuple(genome)
        if len(genome) != len(self.genes):
            self.space.decode(genome, self.info)  # raises: the genome does not fit the space's layout
        parts, model = self._parts, self.size_model
        if len(parts) >= GENOME_PARTS:
            parts.clear()
        kept: list[int] = []
        segments = []
        items = count = tensor_bytes = entries = frames = mask = 0
        for layer, genes_of in self._layer_genes:
            key = (layer.index, len(kept), genes_of(genome))
            part = parts.get(key)
            if part is None:
                part = parts[key] = self._layer_part(layer, len(kept), genome)
            segment, item, part_bytes, part_entries, part_frames, part_mask = part
            if item:
                items += item
                count += 1
            if segment is not None:
                segments.append(segment)
                kept.append(layer.index)
                tensor_bytes += part_bytes
                entries += part_entries
                frames += part_frames
                mask |= part_mask
        if not kept:
            self.space.decode(genome, self.info).validate_against(self.info)  # raises: every layer dropped
        key = (None, self._other_genes(genome))
        part = parts.get(key)
        if part is None:
            outside = CompressionConfig(default=KEPT, embedding=self._embedding[1][genome[self._embedding[0]]],
                                        head=KEPT if self._head is None else self._head[1][genome[self._head[0]]])
            segment = model.non_decoder_segment(outside)
            part = parts[key] = (segment, model.config_frame_length(outside), *self._sums(segment))
        segment, frame, part_bytes, part_entries, part_frames, part_mask = part
        segments.append(segment)
        sums = _Sums(tensor_bytes + part_bytes, entries + part_entries, frames + part_frames, mask | part_mask)
        return tuple(kept), segments, frame + max(count - 1, 0) + items, sums

    def _layer_part(self, layer, new_index: int, genome: tuple[int, ...]) -> tuple:
        """(the layer's memoised segment or None when dropped, its item's length in the config's JSON or 0)."""
        drop_position, attention_genes, mlp_genes = self._entry_genes[layer.index]
        drop = self.genes[drop_position].choices[genome[drop_position]]
        entry = LayerConfig(attention=self.unit_settings[sum(genome[i] * s for i, s in attention_genes)],
                            mlp=self.unit_settings[sum(genome[i] * s for i, s in mlp_genes)], drop=drop)
        if (layer.index, drop) not in self._checked_drops:  # the whole config's check, for this layer's drop
            CompressionConfig(default=KEPT, layers=((layer.index, LayerConfig(drop=drop)),)).validate_against(self.info)
            self._checked_drops.add((layer.index, drop))
        model = self.size_model
        own = CompressionConfig(default=KEPT, layers=((layer.index, entry),))  # what decode's config says of it
        segment = None if drop == "layer" else model.layer_segment(own, layer, new_index)
        item = 0 if entry.is_default else model.layer_item_length(layer.index, entry)
        return (segment, item, *self._sums(segment)) if segment is not None else (None, item, 0, 0, 0, 0)

    def _sums(self, segment) -> tuple[int, int, int, int]:
        """A segment's (tensor bytes, characters of its manifest entries with a comma each and without
        their offsets, frames, bits of the setting keys it puts in the settings table); records each
        key's shortest and longest item seen (a key's settings may differ in fields its key leaves out)."""
        model, mask = self.size_model, 0
        for key, setting in segment.settings:
            bit = self._key_bits.setdefault(key, 1 << len(self._key_bits))
            mask |= bit
            length = model.setting_item_length(key, setting)
            shortest, longest = self._key_lengths.get(key, (length, length))
            if (min(shortest, length), max(longest, length)) != self._key_lengths.get(key):
                self._key_lengths[key] = (min(shortest, length), max(longest, length))
                self._key_length_list = [(bit, *self._key_lengths[k]) for k, bit in self._key_bits.items()]
                self._settings_bounds.clear()  # bounds computed with the narrower ranges no longer hold
        return (segment.compressed_bytes, segment.template_length + len(segment.rows), len(segment.frame_offsets),
                mask)

    def bounds(self, genome: Sequence[int]) -> tuple[int, int]:
        """(low, high) with low <= artifact_bytes(genome) <= high, from sums memoised per part: the manifest
        is counted exactly but for each frame offset's digits (1 to those of the tensors' bytes) and the
        settings table's items (each key between its shortest and longest item seen)."""
        kept, _, config_length, sums = self._plan(genome)
        return self._bounds(kept, config_length, sums)

    def _bounds(self, kept: tuple[int, ...], config_length: int, sums: _Sums) -> tuple[int, int]:
        model = self.size_model
        other = sums.tensor_bytes + self.fixed_bytes + model.metadata.model_config_bytes(kept)
        settings = self._settings_bounds.get(sums.mask)
        if settings is None:
            count = shortest = longest = 0
            for bit, low, high in self._key_length_list:
                if sums.mask & bit:
                    count += 1
                    shortest += low
                    longest += high
            settings = self._settings_bounds[sums.mask] = (shortest + max(count - 1, 0), longest + max(count - 1, 0))
        body = model.manifest_body_length(kept, sums.tensor_bytes) + config_length + sums.entries - 1
        low = body + settings[0] + sums.frames  # every offset has a digit at least
        high = body + settings[1] + sums.frames * len(str(sums.tensor_bytes))  # no offset exceeds the tensors' bytes
        # manifest.json's length grows with its body's (the settled total is the least fixed point)
        return other + model.manifest_length_of(low, other), other + model.manifest_length_of(high, other)


@dataclass(frozen=True)
class _Sums:
    """What bounds() needs of a genome's plan, summed over its parts."""

    tensor_bytes: int
    entries: int  # characters of the manifest's tensor entries with a comma each, less their offsets
    frames: int
    mask: int  # the bits of the setting keys in the manifest's settings table


def _getter(positions: list[int]) -> Callable[[tuple], tuple]:
    """The genome's values at `positions` as a tuple (operator.itemgetter, which returns a bare value
    for one position and fails for none)."""
    if not positions:
        return lambda genome: ()
    if len(positions) == 1:
        position = positions[0]
        return lambda genome: (genome[position],)
    return operator.itemgetter(*positions)
