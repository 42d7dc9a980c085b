"""The documentation against the tree: bench/README.md indexes bench/, the READMEs' links resolve,
the README stays a recipe, and its deviations list names every `NOTE:` in the code."""
import collections
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench")
LINK = re.compile(r"\]\(([^)\s]+)\)")


def read(*path):
    with open(os.path.join(ROOT, *path)) as f:
        return f.read()


def entries(folder):
    return sorted(e for e in os.listdir(folder) if not e.startswith(".") and e != "__pycache__")


def test_bench_index_names_every_file_and_every_run():
    """Every file and study folder of bench/ is named in bench/README.md; every entry of a study
    folder bench/<study>/ (a run, a note) in bench/README.md or in the study's bench/<study>.md."""
    index = read("bench", "README.md")
    missing = [e for e in entries(BENCH) if e != "README.md" and e not in index]
    for study in (e for e in entries(BENCH) if os.path.isdir(os.path.join(BENCH, e))):
        notes = index
        if os.path.exists(os.path.join(BENCH, study + ".md")):
            notes += read("bench", study + ".md")
        missing += [f"{study}/{e}" for e in entries(os.path.join(BENCH, study)) if e not in notes]
    assert not missing, f"bench/README.md (or the study's .md) does not name {missing}"


def test_relative_links_of_the_readmes_exist():
    for doc in ("README.md", os.path.join("bench", "README.md")):
        for target in LINK.findall(read(doc)):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue
            path = os.path.join(ROOT, os.path.dirname(doc), target.split("#")[0])
            assert os.path.exists(path), f"{doc} links {target}, which does not exist"


def test_readme_is_a_recipe_of_at_most_260_lines():
    assert len(read("README.md").splitlines()) <= 260


def test_deviations_list_one_bullet_per_note_in_the_code():
    notes = collections.Counter()
    for name in entries(ROOT):
        if name.endswith(".py") or name == "run_iterations.sh":
            notes[name] += len(re.findall(r"\bNOTE:", read(name)))
    notes = +notes  # files without a note drop out
    readme = read("README.md")
    section = readme[readme.index("## Deviations"):]
    section = section[:section.find("\n## ", 1)]
    bullets = collections.Counter()
    for name, count in re.findall(r"^- `([^`]+)`(?: \((\d+)\))?: ", section, flags=re.M):
        bullets[name] += int(count or 1)  # "- `file.py` (3): a; b; c." lists three notes
    assert bullets == notes, (
        f"README deviations (bullets per file) {dict(bullets)} != NOTE: lines per file {dict(notes)}")


def table_rows(text):
    """The cells of every markdown table row in text (header and separator rows left out)."""
    rows = [[c.strip() for c in l.strip().strip("|").split("|")] for l in text.splitlines()
            if l.startswith("| ")]
    return [r for r in rows if not set("".join(r)) <= set("-: ")]


def test_readme_claims_table_is_bench_claims_md():
    """Each row of the README's "Which claims hold" table is bench/claims.md's row of the same
    claim: its paper's number, our mean +- std and the verdict (issue 32)."""
    readme = read("README.md")
    start = readme.index("| claim |", readme.index("### Which claims hold"))
    table = readme[start:readme.index("\n\n", start)]
    claims = {r[0]: r for r in table_rows(read("bench", "claims.md")) if len(r) == 7}
    rows = table_rows(table)[1:]   # (the first: the header)
    assert rows
    for claim, paper, ours, verdict in rows:
        assert claim in claims, f"README's claim {claim!r} is not a row of bench/claims.md"
        assert [paper, ours, verdict] == [claims[claim][i] for i in (2, 4, 6)], claim
