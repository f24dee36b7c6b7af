"""WARC read + extract: pages per second on one core, beside datatrove's WarcReader + Trafilatura.

The WARC is built here, as Common Crawl writes one (a gzip member per record; a request, the
response and a metadata record per page), from pages of the twenty layouts of
scripts/build_extraction_set.py filled with Python documentation prose, each carrying the inline
CSS and script a real page does (about 20 KB of HTML a page). Crucible's side is what the read
and extract steps compute (`read_shard`, then `ExtractStage.decide` on each batch), without the
Parquet writes; datatrove's is its `WarcReader` piped into its `Trafilatura` extractor (its
defaults: precision-favouring, a per-page timeout in a sandbox process). Both run in this process
on the same file, in turns; the figure is pages per wall second. Extraction quality per engine on
the labelled pages of tests/data/extraction is printed too.
"""

from __future__ import annotations

import random
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "scripts")]

from bench.common import Result, base_parser, best_times, print_json, print_table, rate  # noqa: E402
from build_extraction_set import LAYOUTS, Page, prose_documents  # noqa: E402
from data_prep.extract import ENGINES, ExtractConfig, ExtractStage  # noqa: E402
from data_prep.readers import ReadConfig, plan_shards, read_shard  # noqa: E402
from tests.extraction_set import engine_scores  # noqa: E402
from tests.warc_files import metadata, request, response, warcinfo, write_warc  # noqa: E402

STYLE = "".join(
    f".block-{i} {{ margin: {i % 7}px {i % 5}em; color: #{i * 2654435761 % 0xFFFFFF:06x}; }}\n" for i in range(180)
)
SCRIPT = "".join(
    f"function handler{i}(event) {{ if (event && event.target) {{ track('click', {i}, "
    f"event.target.id); }} return false; }}\n"
    for i in range(90)
)


def build_warc(path: Path, pages: int, seed: int = 1) -> int:
    """A WARC of `pages` pages (plus their requests and metadata); returns its size in bytes."""
    rng = random.Random(seed)
    documents = prose_documents()
    records = [warcinfo()]
    for n in range(pages):
        title, paragraphs = rng.choice(documents)
        page = Page(f"{title} ({n})")
        page.head.append(f"<style>{STYLE}</style><script>{SCRIPT}</script>")
        LAYOUTS[n % len(LAYOUTS)](page, rng.sample(paragraphs, min(len(paragraphs), rng.randint(4, 7))), rng)
        url = f"https://site-{n % 97}.example/{n}"
        records += [request(url), response(url, page.html().encode()), metadata(url)]
    write_warc(path, records)
    return path.stat().st_size


def crucible_side(path: Path, engine: str) -> tuple[int, int]:
    """(pages read, pages kept) by the read and extract steps' work."""
    stage = ExtractStage(ExtractConfig(engine=engine))
    pages = kept = 0
    for shard in plan_shards([path], 2**40):
        for batch in read_shard(shard, ReadConfig(), 1000):
            decision = stage.decide(batch.table)
            pages += batch.table.num_rows
            kept += batch.table.num_rows - len(decision.drops)
    return pages, kept


def datatrove_side(folder: Path) -> tuple[int, int]:
    from datatrove.pipeline.extractors import Trafilatura
    from datatrove.pipeline.readers import WarcReader

    counted = {"pages": 0}

    def pages() -> Any:
        for document in WarcReader(str(folder), glob_pattern="*.warc.gz").run():
            counted["pages"] += 1
            yield document

    kept = sum(1 for _ in Trafilatura().run(pages()))
    return counted["pages"], kept


def quality_rows() -> None:
    print("\n### extraction quality on tests/data/extraction (20 labelled pages)\n")
    print("| engine | main paragraphs kept | boilerplate blocks removed | weakest page (main, boilerplate) |")
    print("|---|---:|---:|---|")
    for engine in ENGINES:
        scores = engine_scores(engine)
        name, main, boilerplate = min(scores.pages, key=lambda row: min(row[1], row[2]))
        print(
            f"| {engine} | {scores.main_kept:.3f} ({scores.main}) | {scores.boilerplate_removed:.3f} "
            f"({scores.boilerplate}) | {name} ({main:.2f}, {boilerplate:.2f}) |"
        )


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=3000, help="pages in the generated WARC (default 3000)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "crawl.warc.gz"
        size = build_warc(path, args.pages)
        corpus = f"{args.pages:,} pages, {size / 2**20:.1f} MB .warc.gz"
        sides = [lambda: crucible_side(path, "resiliparse"), lambda: crucible_side(path, "trafilatura")]
        try:
            import datatrove  # noqa: F401

            sides.append(lambda: datatrove_side(Path(folder)))
        except ImportError as exc:
            print(f"datatrove: skipped ({exc}); install the bench extra")
        seconds, counts = best_times(sides, args.repeat)
    baseline = rate(counts[2][0], seconds[2]) if len(sides) == 3 else None
    names = ["read + extract, resiliparse (default)", "read + extract, trafilatura"]
    results = [
        Result(
            name,
            corpus,
            counts[i][0],
            "pages/s",
            rate(counts[i][0], seconds[i]),
            "datatrove WarcReader + Trafilatura",
            baseline,
            aim=3.0 if i == 0 else None,
            note=f"{counts[i][1]:,} pages kept" + (f"; datatrove kept {counts[2][1]:,}" if baseline else ""),
        )
        for i, name in enumerate(names)
    ]
    print_table("WARC read + extract (one core)", results)
    quality_rows()
    print_json("warc", results)


if __name__ == "__main__":
    main()
