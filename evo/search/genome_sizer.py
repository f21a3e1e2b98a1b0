"""A genome's whole artifact bytes from arrays over a filled size table's [tensors × columns], exactly.

SizeTable._plan walks the layers and looks up (or builds) a memoised part per layer; a part is new
whenever a layer's attention × MLP × drop combination or its position among the kept layers is new,
which during repair and fill is most checks. Here every piece of the count is an array indexed by
(tensor, column), so sizing a genome is a fixed number of numpy gathers and sums, whatever the genome:

- tensors.bin: the table's bytes of each kept tensor;
- the manifest's tensor entries: each (tensor, column)'s entry template length under its own name, plus
  the length its renumbered name gains or loses at its layer's new index, plus the digits of every
  frame's offset (an exclusive cumulative sum of the kept frames' lengths, in tensors.bin order);
- the settings table: one item per setting key, the last tensor's setting of that key winning;
- the config's JSON: the frame (embedding and head settings) plus each layer's item, the sum of its
  attention, MLP and drop fields;
- config.json and the manifest's body by the kept layers (the size model's memos), the fixed files.

It is the size model's count (size_of_plan) rearranged, not an estimate: tests compare both on random
genomes with drops. Genomes the arrays do not cover (wrong length, a value out of range, a drop the
model refuses, every layer dropped) return None and the caller takes the size table's own path, which
raises the same errors as before.
"""

from __future__ import annotations

import json

import numpy as np

from evo.compress.config import KEPT, CompressionConfig, LayerConfig
from evo.errors import EvoError

_POWERS_OF_TEN = 10 ** np.arange(1, 19, dtype=np.int64)  # len(str(n)) - 1 = count of powers <= n
_ZERO = np.zeros(1, dtype=np.int64)


class GenomeSizer:
    """Exact artifact bytes of genomes of a filled SizeTable, from arrays (see the module docstring)."""

    def __init__(self, table) -> None:
        if not table.filled:
            raise RuntimeError("a GenomeSizer needs a filled size table")  # a bug, never user input
        model, info, genes = table.size_model, table.info, table.genes
        self.model = model
        self.fixed_bytes = table.fixed_bytes
        tensors, width = table.table.shape
        self._width = width
        self._choices = np.asarray([len(g.choices) for g in genes], dtype=np.int64)
        self._genes = len(genes)
        self._unit_genes, self._strides = table._unit_genes, table._strides
        units = table._unit_genes.shape[0]
        # each tensor's column: a unit's combination (kind 1), a gene's value (kind 2) or 0 (kind 0),
        # gathered from [combinations of the units] + [genome] + [0]
        kind, source = table._kind, table._source
        self._column_index = np.where(kind == 1, source, np.where(kind == 2, units + source, units + len(genes)))
        layers = info.layers
        layer_number = {layer.index: n for n, layer in enumerate(layers)}
        drop_position = {g.layer: i for i, g in enumerate(genes) if g.kind == "drop"}
        self._drop_genes = np.asarray([drop_position[layer.index] for layer in layers], dtype=np.int64)
        drop_width = max(len(genes[p].choices) for p in self._drop_genes) if layers else 1
        # per (layer, drop choice): the layer removed whole; the choice accepted by the model
        layer_dropped = np.zeros((len(layers), drop_width), dtype=bool)
        drop_ok = np.zeros((len(layers), drop_width), dtype=bool)
        drop_field = np.zeros((len(layers), drop_width), dtype=np.int64)
        for n, layer in enumerate(layers):
            for d, drop in enumerate(genes[self._drop_genes[n]].choices):
                layer_dropped[n, d] = drop == "layer"
                drop_ok[n, d] = _accepts(info, layer.index, drop)
                drop_field[n, d] = 0 if drop == "none" else 1 + len('"drop":') + len(json.dumps(drop))
        # each tensor's layer number (non-decoder tensors: one past the last layer, never dropped)
        self._tensor_layer = np.asarray([layer_number[genes[p].layer] if p >= 0 else len(layers)
                                         for p in table._layer], dtype=np.int64)
        self._rows = np.arange(tensors)
        # per (tensor, column): bytes, entry template length under its own name, frame lengths, setting key
        template = np.zeros((tensors, width), dtype=np.int64)
        frame_lengths = np.zeros((tensors, width, 3), dtype=np.int64)
        has_frame = np.zeros((tensors, width, 3), dtype=bool)
        key_id = np.zeros((tensors, width), dtype=np.int64)
        item = np.zeros((tensors, width), dtype=np.int64)
        keys: dict[str, int] = {}
        for r, (name, settings) in enumerate(zip(table.names, table.columns)):
            for c, setting in enumerate(settings):
                row = model._row(name, name, setting)
                if row.compressed_bytes != table.table[r, c]:
                    raise RuntimeError(f"the size table's bytes of {name} differ from its size entry")
                template[r, c] = row.template_length
                for k, (_, _, length) in enumerate(row.frames):
                    frame_lengths[r, c, k] = length
                    has_frame[r, c, k] = True
                key_id[r, c] = keys.setdefault(row.setting_key, len(keys))
                item[r, c] = model.setting_item_length(row.setting_key, setting)
        # flat over (tensor, column): bytes, entry template length, frames, setting key and its item's length
        self._flat_base = self._rows * width
        self._bytes = table.table.reshape(-1)
        self._template = template.reshape(-1)
        self._frames = (frame_lengths * 2 + has_frame).reshape(-1, 3)  # a frame's length * 2 + 1, absent 0
        self._key_id = key_id.reshape(-1)
        self._item = item.reshape(-1)
        # a key whose settings all have items of one length is counted by presence (else by its last tensor)
        lengths_of_key: dict[int, set[int]] = {}
        for r, settings in enumerate(table.columns):
            for c in range(len(settings)):
                lengths_of_key.setdefault(int(key_id[r, c]), set()).add(int(item[r, c]))
        self._item_of_key = (np.asarray([lengths_of_key[k].pop() for k in range(len(keys))], dtype=np.int64)
                             if all(len(v) == 1 for v in lengths_of_key.values()) else None)
        # per (layer, drop choice): 0 "none", 1 a block removed, 2 the layer removed, 3 refused by the model
        self._drop_base = np.arange(len(layers), dtype=np.int64) * drop_width
        self._drop_code = np.where(~drop_ok, 3, np.where(layer_dropped, 2, np.where(
            drop_field > 0, 1, 0))).reshape(-1)
        self._drop_field = drop_field.reshape(-1)
        n_drops = table._keep.shape[1]
        self._keep_base = self._rows * n_drops
        self._keep_flat = table._keep.reshape(-1).astype(np.int64)
        # a decoder tensor's name stored as layer `new index`: its length less its own name's
        name_delta = np.zeros((tensors, len(layers) + 1), dtype=np.int64)
        prefix = info.layers_path
        for r in range(tensors):
            n = self._tensor_layer[r]
            if n == len(layers):
                continue
            module = f"{layers[n].module}."
            for new_index in range(n + 1):
                name_delta[r, new_index] = len(f"{prefix}.{new_index}.") - len(module)
        self._name_base = self._rows * (len(layers) + 1)
        self._name_delta = name_delta.reshape(-1)
        # the config's JSON: per layer "i":{"attention":…,"mlp":…[,"drop":…]}, its fields by unit combination
        if any(s is None for s in table.unit_settings):  # a None setting leaves a field out: not counted here
            raise RuntimeError("a unit setting of the space is None")
        writer = model._writer
        combinations = len(table.unit_settings)
        attention_field = np.asarray([len('"attention":') + len(writer.setting_json(s)) for s in table.unit_settings],
                                     dtype=np.int64)
        mlp_field = np.asarray([len('"mlp":') + len(writer.setting_json(s)) for s in table.unit_settings],
                               dtype=np.int64)
        unit_field = np.zeros((units, combinations), dtype=np.int64)
        for layer in layers:
            _, attention_genes, mlp_genes = table._entry_genes[layer.index]
            unit_field[_unit_of(table, attention_genes)] += attention_field
            unit_field[_unit_of(table, mlp_genes)] += mlp_field
        self._unit_base = np.arange(units, dtype=np.int64) * combinations
        self._unit_field = unit_field.reshape(-1)
        # key, colon, braces and the comma between attention and mlp of each item; the commas between items
        self._config_base = sum(len(json.dumps(str(layer.index))) + 1 + 2 + 1 for layer in layers) + max(
            len(layers) - 1, 0)
        self._embedding, self._head = table._embedding, table._head
        self._config_frames: dict[tuple[int, int], int] = {}  # config frame length by (embedding, head) choices
        self._kept: dict[bytes, tuple[tuple[int, ...], int]] = {}  # kept layers → (indices, config.json bytes)
        self._layer_index = np.asarray([layer.index for layer in layers], dtype=np.int64)
        self._all_layers = np.ones(len(layers), dtype=bool)

    def artifact_bytes(self, genome) -> int | None:
        """The artifact's bytes, or None for a genome the arrays do not cover (see the module docstring)."""
        return self._size(genome, None)

    def exceeds(self, genome, budget_bytes: int) -> bool | None:
        """artifact_bytes(genome) > budget_bytes (the tensors plus the fixed files decide first), or None."""
        size = self._size(genome, budget_bytes)
        return None if size is None else size > budget_bytes

    def _size(self, genome, budget_bytes: int | None) -> int | None:
        if len(genome) != self._genes:
            return None
        try:
            g = np.frombuffer(bytes(genome), dtype=np.uint8)  # every gene has fewer than 256 choices
        except (TypeError, ValueError):  # a value that is not a small non-negative int
            return None
        if not (g < self._choices).all():
            return None
        drops = g[self._drop_genes]
        drop_index = self._drop_base + drops
        codes = self._drop_code[drop_index]  # 0 "none", 1 a block removed, 2 the layer removed, 3 refused
        top = codes.max()
        if top == 3:
            return None
        combos = (g[self._unit_genes] * self._strides).sum(-1)
        flat = self._flat_base + np.concatenate((combos, g, _ZERO))[self._column_index]
        if top == 0:  # nothing dropped: every tensor is stored under its own name
            kept = None
            tensor_bytes = int(self._bytes[flat].sum())
        else:
            dropped = codes == 2
            if dropped.all():
                return None
            kept = self._keep_flat[self._keep_base + np.append(drops, 0)[self._tensor_layer]]
            tensor_bytes = int(kept @ self._bytes[flat])
        if budget_bytes is not None and tensor_bytes + self.fixed_bytes > budget_bytes:
            return tensor_bytes + self.fixed_bytes  # over the budget already: the rest only adds
        frames = np.take(self._frames, flat, axis=0)
        if kept is None:
            stored, template = len(flat), int(self._template[flat].sum())
            layers_kept = self._all_layers
            names = 0
        else:
            stored, template = int(kept.sum()), int(kept @ self._template[flat])
            frames *= kept[:, None]
            layers_kept = ~dropped
            if top == 2:  # a layer removed: the later layers' tensors are renumbered
                new_index = np.append(np.cumsum(layers_kept) - layers_kept, 0)[self._tensor_layer]
                names = int(kept @ self._name_delta[self._name_base + new_index])
            else:
                names = 0
        frames = frames.ravel()
        lengths = (frames >> 1)[(frames & 1).astype(bool)]  # the stored frames', in tensors.bin order
        offsets = np.cumsum(lengths) - lengths
        # Σ len(str(offset)) = frames + Σ over powers of ten of the (ascending) offsets at or above it
        digits = len(offsets) * (1 + len(_POWERS_OF_TEN)) - int(np.searchsorted(offsets, _POWERS_OF_TEN).sum())
        entries = stored - 1 + template + names + digits
        settings = self._settings_length(flat, kept)
        config = self._config_base + int(self._unit_field[self._unit_base + combos].sum()) + int(
            self._drop_field[drop_index].sum()) + self._frame_length(g)
        key = layers_kept.tobytes()
        found = self._kept.get(key)
        if found is None:
            indices = tuple(int(i) for i in self._layer_index[layers_kept])
            found = self._kept[key] = (indices, self.model.metadata.model_config_bytes(indices))
        indices, model_config = found
        model = self.model
        body = model.manifest_body_length(indices, tensor_bytes) + config + settings + entries
        other = self.fixed_bytes + model_config + tensor_bytes
        return other + model.manifest_length_of(body, other)

    def _settings_length(self, flat: np.ndarray, kept: np.ndarray | None) -> int:
        """Characters of the manifest's settings table: an item per key used (the last tensor's setting of
        the key), commas between."""
        keys = self._key_id[flat] if kept is None else self._key_id[flat[kept.astype(bool)]]
        if self._item_of_key is not None:  # every setting of a key has an item of the same length
            used = np.bincount(keys, minlength=len(self._item_of_key)) > 0
            return int(self._item_of_key @ used) + max(int(used.sum()) - 1, 0)
        items = self._item[flat] if kept is None else self._item[flat[kept.astype(bool)]]
        unique, last = np.unique(keys[::-1], return_index=True)  # the last tensor of a key names its setting
        return int(items[::-1][last].sum()) + max(len(unique) - 1, 0)

    def _frame_length(self, g: np.ndarray) -> int:
        embedding = int(g[self._embedding[0]])
        head = -1 if self._head is None else int(g[self._head[0]])
        length = self._config_frames.get((embedding, head))
        if length is None:
            outside = CompressionConfig(default=KEPT, embedding=self._embedding[1][embedding],
                                        head=KEPT if self._head is None else self._head[1][head])
            length = self._config_frames[(embedding, head)] = self.model.config_frame_length(outside)
        return length


def _unit_of(table, unit_genes) -> int:
    """The unit index whose genes are `unit_genes` ((position, stride) pairs of SizeTable._entry_genes)."""
    positions = [position for position, _ in unit_genes]
    for unit, row in enumerate(table._unit_genes):
        if [int(i) for i in row] == positions:
            return unit
    raise RuntimeError("a layer's unit genes match no unit of the size table")  # a bug


def _accepts(info, index: int, drop: str) -> bool:
    """Whether the model accepts this layer's drop (validate_against of a config that drops only it)."""
    try:
        CompressionConfig(default=KEPT, layers=((index, LayerConfig(drop=drop)),)).validate_against(info)
    except EvoError:
        return False
    return True
