"""The taxonomy file and its API: lookup, annotation, tree and per-level targets."""

from __future__ import annotations

from pathlib import Path

import pytest

from sonofm.datasets.taxonomy import LEVELS, SourceInfo, Taxonomy, TaxonomyError


@pytest.fixture(scope="module")
def tax() -> Taxonomy:
    return Taxonomy.load()


def test_required_sources(tax: Taxonomy) -> None:
    expect = {
        "busi": ("breast", "thorax", ["normal", "benign", "malignant"]),
        "cca": ("carotid", "head_and_neck", []),
        "pocus": ("lung", "thorax", ["covid", "pneumonia", "healthy", "viral"]),
        "hc18": ("fetal_head", "fetus", []),
        "tn3k": ("thyroid", "head_and_neck", ["benign", "malignant"]),
    }
    for name, (organ, region, labels) in expect.items():
        info = tax.source(name)
        assert isinstance(info, SourceInfo)
        assert (info.organ, info.region, info.labels) == (organ, region, labels)
    assert {tax.source(s).organ for s in tax.sources} >= {"liver", "kidney", "heart", "thyroid"}


def test_synthetic_block_matches_generator(tax: Taxonomy) -> None:
    from sonofm.datasets.synthetic import SYNTHETIC_SOURCES

    assert SYNTHETIC_SOURCES
    for name, entry in SYNTHETIC_SOURCES.items():
        info = tax.source(name)
        assert (info.organ, info.region, info.labels, info.probe) == (
            entry["organ"],
            entry["region"],
            list(entry["labels"]),
            entry["probe"],
        )


def test_unknown_source_hint(tax: Taxonomy) -> None:
    with pytest.raises(TaxonomyError, match=r"unknown source 'bussi': did you mean busi.*taxonomy\.yaml"):
        tax.source("bussi")
    with pytest.raises(TaxonomyError, match="unknown source"):
        tax.annotate({"source": "nowhere"})


def test_annotate_fills_and_validates(tax: Taxonomy) -> None:
    meta = {"source": "busi", "label": "benign", "path": "benign/x.png"}
    out = tax.annotate(meta)
    assert out["organ"] == "breast" and out["region"] == "thorax" and "organ" not in meta
    assert tax.annotate({"source": "busi", "label": None})["label"] is None
    assert tax.annotate({"source": "busi", "organ": "breast", "region": "thorax"})["organ"] == "breast"
    with pytest.raises(TaxonomyError, match=r"label 'Benign' is not in its vocabulary.*did you mean benign"):
        tax.annotate({"source": "busi", "label": "Benign"})
    with pytest.raises(TaxonomyError, match=r"label 'x' given but the source has no label vocabulary"):
        tax.annotate({"source": "cca", "label": "x"})
    with pytest.raises(TaxonomyError, match=r"\(a\.png\): region 'abdomen' given"):
        tax.annotate({"source": "busi", "region": "abdomen", "path": "a.png"})


def test_tree_structure(tax: Taxonomy) -> None:
    tree = tax.tree()
    names, parents, sizes = tree["names"], tree["parents"], tree["sizes"]
    assert tree["levels"] == list(LEVELS)
    assert all(sizes[lv] == len(names[lv]) for lv in LEVELS)
    assert set(parents) == {"organ", "source", "leaf"}
    assert all(len(parents[lv]) == sizes[lv] for lv in parents)
    for child, parent in (("organ", "region"), ("source", "organ"), ("leaf", "source")):
        assert all(0 <= p < sizes[parent] for p in parents[child])
        assert parents[child] == sorted(parents[child])  # children grouped under their parent
    o = names["organ"].index("breast")
    assert names["region"][parents["organ"][o]] == "thorax"
    s = names["source"].index("busi")
    assert names["organ"][parents["source"][s]] == "breast"
    assert {"busi/normal", "busi/benign", "busi/malignant", "cca", "hc18"} <= set(names["leaf"])
    assert "busi" not in names["leaf"] and "cca/None" not in names["leaf"]
    leaf = names["leaf"].index("pocus/viral")
    assert names["source"][parents["leaf"][leaf]] == "pocus"
    sub = tax.tree(("organ", "leaf"))
    assert sub["levels"] == ["organ", "leaf"] and names["organ"][sub["parents"]["leaf"][leaf]] == "lung"
    with pytest.raises(TaxonomyError, match="subsequence"):
        tax.tree(("source", "organ"))


def test_targets(tax: Taxonomy) -> None:
    names = tax.tree()["names"]
    t = tax.targets({"source": "busi", "label": "malignant"})
    assert [names[lv][t[lv]] for lv in LEVELS] == ["thorax", "breast", "busi", "busi/malignant"]
    t = tax.targets({"source": "cca", "label": None})
    assert names["leaf"][t["leaf"]] == "cca"
    assert tax.targets({"source": "pocus", "label": None})["leaf"] == -1
    assert tax.targets({"source": None}) == dict.fromkeys(LEVELS, -1)
    t = tax.targets({"source": None, "organ": "liver"})
    assert names["region"][t["region"]] == "abdomen" and t["source"] == -1
    assert tax.targets({"source": "busi", "label": "normal"}, levels=("source",)) == {
        "source": names["source"].index("busi")
    }
    with pytest.raises(TaxonomyError):
        tax.targets({"source": "busi", "label": "cyst"})


def test_bad_files(tmp_path: Path) -> None:
    def load(text: str) -> Taxonomy:
        p = tmp_path / "t.yaml"
        p.write_text(text)
        return Taxonomy.load(p)

    base = "regions:\n  thorax: [breast]\nsources:\n"
    assert load(base + "  s1: {organ: breast, labels: [a, b]}\n").source("s1").region == "thorax"
    with pytest.raises(
        TaxonomyError, match=r"t\.yaml: sources\.s1: organ 'brest' is not listed.*did you mean breast"
    ):
        load(base + "  s1: {organ: brest}\n")
    with pytest.raises(
        TaxonomyError, match=r"sources\.s1: region 'abdomen' but organ 'breast' is in region 'thorax'"
    ):
        load(base + "  s1: {organ: breast, region: abdomen}\n")
    with pytest.raises(TaxonomyError, match=r"unknown key\(s\) \['label'\]"):
        load(base + "  s1: {organ: breast, label: [a]}\n")
    with pytest.raises(TaxonomyError, match="duplicate labels"):
        load(base + "  s1: {organ: breast, labels: [a, a]}\n")
    with pytest.raises(TaxonomyError, match="listed under regions"):
        load("regions:\n  a: [x]\n  b: [x]\nsources: {}\n")
    with pytest.raises(TaxonomyError, match="cannot read taxonomy"):
        load("regions: [unclosed\n")


def test_add_source_at_run_time() -> None:
    tax = Taxonomy.load()
    before = tax.tree()["sizes"]["source"]
    tax.add_source("my_liver", "liver", ["a", "b"])
    assert tax.tree()["sizes"]["source"] == before + 1
    assert tax.annotate({"source": "my_liver", "label": "a"})["region"] == "abdomen"
    with pytest.raises(TaxonomyError, match="already"):
        tax.add_source("busi", "breast")


def test_source_facts_come_from_the_builtin_file(tax: Taxonomy) -> None:
    """Display name, unit of splitting, licence and layout of a known collection are data, not code."""
    from sonofm.datasets.taxonomy import Licence, builtin_facts, source_facts

    busi = tax.source_facts("busi")
    assert busi is not None and busi == source_facts("busi")
    assert (busi.display, busi.group, busi.tasks) == ("BUSI", "image", ("probe", "seg"))
    assert busi.licence == Licence(busi.licence.text, "cc0-1.0", "free") and "CC0" in busi.licence.text
    assert tax.source_facts("pocus").licence.kind == "noncommercial"
    assert tax.source_facts("hc18").licence is None  # no licence recorded: unknown to sonofm
    assert tax.source_facts("busbra") is None and source_facts("my_own_scans") is None
    assert all(f.licence.id == "apache-2.0" for n, f in builtin_facts().items() if n.startswith("synth_"))
    assert "licence" not in tax.source("busi").to_dict()  # facts are never stored in shard indexes


def test_user_files_carry_no_facts(tmp_path: Path) -> None:
    """A user's taxonomy file cannot give facts (the model card never sees it), and a source it
    redeclares loses the built-in source's facts."""
    user = tmp_path / "mine.yaml"
    user.write_text("regions: {thorax: [breast]}\nsources:\n  mine: {organ: breast, licence: {text: t, id: mit, kind: free}}\n")
    with pytest.raises(TaxonomyError, match=r"unknown key\(s\) \['licence'\].*built-in sources only"):
        Taxonomy.load(user)
    user.write_text("regions: {thorax: [breast]}\nsources:\n  mine: {organ: breast}\n  busi: {organ: breast, labels: []}\n")
    tax = Taxonomy.with_user_files(user)
    assert tax.source_facts("mine") is None and tax.source_facts("busi") is None
    assert tax.source_facts("cca").display == "CCA"
    assert Taxonomy.load("configs/taxonomy.yaml").source_facts("cca").display == "CCA"  # the built-in file by path


def test_bad_facts_are_named() -> None:
    base = {"regions": {"thorax": ["breast"]}}
    for entry, match in (
        ({"licence": {"text": "t", "id": "x", "kind": "shareware"}}, r"licence\.kind 'shareware' is not one of"),
        ({"licence": {"text": "t"}}, r"sources\.s\.licence must be a mapping of non-empty text, id and kind"),
        ({"tasks": ["detect"]}, r"sources\.s\.tasks must be a list of \['probe', 'seg'\]"),
        ({"display": ""}, r"sources\.s\.display must be a non-empty string"),
    ):
        with pytest.raises(TaxonomyError, match=match):
            Taxonomy.from_dict({**base, "sources": {"s": {"organ": "breast", **entry}}}, facts=True)
