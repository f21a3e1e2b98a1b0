import pytest

from evo.errors import EvoError
from evo.modelio import describe_model
from evo.search.space import SPACES_DIR, SearchSpace


@pytest.mark.parametrize("name", ["default", "bits", "evop", "double_compression"])
def test_shipped_spaces_parse_and_lay_out(name, tiny_llama):
    space = SearchSpace.load(name)
    info = describe_model(tiny_llama)
    genes = space.genes(info)
    per_layer = 3 * (2 if space.granularity == "group" else 1) + 1
    assert len(genes) == per_layer * info.num_layers + 1  # tied embedding: no head gene
    genome = space.uniform_genome(info, bits=space.bits[-1])
    config = space.decode(genome, info)
    config.validate_against(info)
    assert space.encode(config, info) == genome


def test_every_shipped_space_is_commented():
    for path in SPACES_DIR.glob("*.toml"):
        assert path.read_text().lstrip().startswith("#"), path


def test_decode_puts_genes_where_they_belong(tiny_llama):
    space = SearchSpace.load("default")
    info = describe_model(tiny_llama)
    genes = space.genes(info)
    genome = list(space.uniform_genome(info, bits=4))
    names = [g.name for g in genes]
    genome[names.index("layer2.mlp.bits")] = genes[names.index("layer2.mlp.bits")].choices.index(2)
    genome[names.index("layer1.drop")] = genes[names.index("layer1.drop")].choices.index("attention")
    config = space.decode(tuple(genome), info)
    assert config.layer(2).mlp.bits == 2 and config.layer(2).attention.bits == 4
    assert config.drops == {1: "attention"}
    assert config.layer(0).mlp.prune_criterion == "wanda" and config.layer(0).mlp.group_size == 128


@pytest.mark.parametrize(
    "text, message",
    [
        ('granularity = "tensor"', "granularity"),
        ("[genes]\nbits = [3, 2]", "ascending"),
        ("[genes]\nbits = [7]", "genes.bits"),
        ("[genes]\nsparsity = [0.0, 0.99]", "sparsity"),
        ("[genes]\nbitz = [4]", "genes.bitz"),
        ('[structure]\ndrop = ["attention"]', "none"),
        ('[structure]\ndrop = ["none", "mlp"]\nfixed_drops = 2', "fixed_drops"),
        ("[quantization]\ngroup_size = 100", "group_size"),
        ("this is not toml", "not valid TOML"),
    ],
)
def test_malformed_spaces_name_the_key(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(EvoError, match=message):
        SearchSpace.load(path)


def test_unknown_space_lists_the_shipped_ones():
    with pytest.raises(EvoError, match="default"):
        SearchSpace.load("nope")


def test_a_setting_field_listed_under_genes_becomes_a_gene(tmp_path, tiny_llama):
    """A new operator's TensorSetting field is searched by one line in a space file, no code."""
    path = tmp_path / "sym.toml"
    path.write_text("[genes]\nbits = [3, 4]\nsymmetric = [false, true]\n")
    space = SearchSpace.load(path)
    info = describe_model(tiny_llama)
    genes = space.genes(info)
    names = [g.name for g in genes]
    assert names[:4] == ["layer0.attention.bits", "layer0.attention.rescale", "layer0.attention.sparsity",
                         "layer0.attention.symmetric"]
    genome = list(space.uniform_genome(info, bits=4))
    assert genome[names.index("layer0.mlp.symmetric")] == 0  # the base's value (asymmetric)
    genome[names.index("layer1.mlp.symmetric")] = 1
    config = space.decode(tuple(genome), info)
    assert config.layer(1).mlp.symmetric and not config.layer(1).attention.symmetric
    assert space.encode(config, info) == tuple(genome)
    assert SearchSpace.from_dict(space.to_dict()) == space
    assert space.to_dict()["genes"]["symmetric"] == [False, True]


def test_spaces_ship_inside_the_package():
    from evo.search import space as module

    assert SPACES_DIR.parent == __import__("pathlib").Path(module.__file__).parent
    assert {p.stem for p in SPACES_DIR.glob("*.toml")} >= {"default", "bits", "evop", "double_compression"}


def test_embedding_quantizer_is_a_table_key(tmp_path, tiny_llama):
    """[embedding] quantizer = "mse": the embedding takes it whatever the linears' quantizer (gptq here)."""
    path = tmp_path / "embmse.toml"
    path.write_text('[quantization]\nquantizer = "gptq"\n[genes]\nbits = [3, 4]\n[embedding]\nbits = [4, 8]\n'
                    'quantizer = "mse"\n')
    space = SearchSpace.load(path)
    info = describe_model(tiny_llama)
    genome = space.uniform_genome(info, bits=4, embedding_bits=4)
    config = space.decode(genome, info)
    assert config.embedding.quantizer == "mse" and config.embedding.bits == 4
    assert config.layer(0).mlp.quantizer == "gptq"
    assert space.encode(config, info) == genome
    assert SearchSpace.from_dict(space.to_dict()) == space
    assert space.to_dict()["embedding"]["quantizer"] == "mse"
    # without the key, gptq spaces keep rtn for the embedding (no input Hessian), as before
    path.write_text('[quantization]\nquantizer = "gptq"\n[embedding]\nbits = [4, 8]\n')
    plain = SearchSpace.load(path)
    assert plain.decode(plain.uniform_genome(info, bits=4), info).embedding.quantizer == "rtn"
    assert "quantizer" not in plain.to_dict()["embedding"]


@pytest.mark.parametrize("value, message", [('"gptq"', "embedding.quantizer"), ("3", "embedding.quantizer")])
def test_embedding_quantizer_refuses_what_it_cannot_run(tmp_path, value, message):
    path = tmp_path / "bad.toml"
    path.write_text(f"[embedding]\nbits = [4, 8]\nquantizer = {value}\n")
    with pytest.raises(EvoError, match=message):
        SearchSpace.load(path)


def test_warm_start_tries_narrower_embeddings():
    """At a budget where the widest embedding leaves the decoder at its lowest width, the first
    population also holds a genome with a narrower embedding and wider decoder, within the budget."""
    import random

    from evo.search.engines import Problem
    from evo.search.space import narrow_embedding_genomes, warm_start
    from evo.types import Gene

    numel, bits, emb = [100, 200, 300], (2, 3, 4), (4, 8)
    genes = tuple([Gene(f"u{u}.bits", "bits", bits, u, u) for u in range(3)] + [Gene("embedding.bits", "embedding_bits", emb)])

    def size_of(genome):
        return sum(n * bits[g] for n, g in zip(numel, genome[:3])) + 100 * emb[genome[3]]

    # uniform 3-bit: 1800 + 800 (8-bit embedding) does not fit 2300; with the 4-bit embedding, 2200 does
    problem = Problem(genes=genes, size_of=size_of, budget_bytes=2300)
    narrow, wider = narrow_embedding_genomes(problem, random.Random(0))
    assert narrow[3] == 0 and min(narrow[:3]) >= 1 and size_of(narrow) <= 2300  # uniform 3-bit, then filled
    assert narrow == (2, 1, 1, 0)  # fill spent the last 100 bytes on the first unit
    assert wider == (2, 2, 2, 0) and size_of(wider) > 2300  # uniform 4-bit: warm_start repairs it
    population = warm_start(problem, random.Random(0), 6)
    assert any(g[3] == 0 and min(g[:3]) >= 1 for g in population)
    assert all(size_of(g) <= 2300 for g in population)


@pytest.mark.parametrize("name", ["default", "bits", "evop", "double_compression"])
def test_decode_memoised_per_layer_equals_the_genes_values(name, tiny_llama):
    """decode memoises each layer's entry by its genes: over random genomes (layers repeating and
    changing combinations) every config equals the one built from the genes' values directly."""
    import random

    from evo.compress.config import KEPT, CompressionConfig, LayerConfig

    space = SearchSpace.load(name)
    info = describe_model(tiny_llama)
    genes = space.genes(info)
    rng = random.Random(7)
    parents = [tuple(rng.randrange(len(g.choices)) for g in genes) for _ in range(4)]
    for _ in range(200):
        first, second = rng.sample(parents, 2)
        genome = tuple(a if rng.random() < 0.5 else b for a, b in zip(first, second))
        genome = tuple(rng.randrange(len(g.choices)) if rng.random() < 0.05 else v for g, v in zip(genes, genome))
        values = {gene.name: gene.choices[v] for gene, v in zip(genes, genome)}
        layers = {}
        for layer in range(info.num_layers):
            units = [f"layer{layer}"] * 2 if space.granularity == "layer" else [f"layer{layer}.attention",
                                                                                f"layer{layer}.mlp"]
            attention, mlp = (space.setting({n: values[f"{u}.{n}"] for n, _ in space.unit_genes}) for u in units)
            layers[layer] = LayerConfig(attention=attention, mlp=mlp, drop=values[f"layer{layer}.drop"])
        expected = CompressionConfig(default=KEPT, embedding=space.setting({"bits": values["embedding.bits"]},
                                                                           key="embedding.bits"), layers=layers)
        assert space.decode(genome, info) == expected
        parents[rng.randrange(len(parents))] = genome
