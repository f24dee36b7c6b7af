"""The blocklist stage: planted blocked domains, URLs and list words go, allow-listed and near-miss ones stay.

Documents are real man pages and Python docs from data/sample, each given a URL (a kept field
that travels into clean/ and lineage); the filters run with sockets disabled, so the public-suffix
lookup cannot reach a network.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_prep.blocklist import BlocklistConfig, BlocklistStage
from pipeline.config import load_config
from pipeline.ground.errors import UserError
from pipeline.prep import run_prep
from tests.conftest import write_jsonl
from tests.sample_corpus import sample_records

# url -> the drop reason expected (None: kept)
URLS = {
    "https://www.Casino-Spam.com/offers": "blocked_domain",  # subdomain, mixed case
    "HTTP://deep.sub.casino-spam.COM:8080/a?b=1": "blocked_domain",
    "https://shop.ads.co.uk/cart": "blocked_domain",  # registered domain under a two-label suffix
    "https://good.casino-spam.com/docs": None,  # allow-listed subdomain wins
    "https://notcasino-spam.com/": None,  # a longer label is another domain
    "https://casino-spam.com.mirror.org/": None,  # the blocked name inside another host
    "https://other.co.uk/": None,  # same public suffix, other registered domain
    "http://wiki.example.org/Bad_Page/": "blocked_url",  # URL entry; scheme and trailing slash ignored
    "https://wiki.example.org/Good_Page": None,
}


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """No connection leaves the machine; local sockets (the prep pool's, a Unix socket) still work."""
    connect = socket.socket.connect

    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError("network disabled in this test")

    def local_only(self: socket.socket, address: object) -> None:
        if self.family in (socket.AF_INET, socket.AF_INET6):
            refuse()
        connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", local_only)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture
def lists(tmp_path: Path) -> dict[str, Path]:
    files = {
        "blocked.txt": "# ad and spam sites\ncasino-spam.com\nADS.co.uk.\nhttps://wiki.example.org/Bad_Page\n",
        "allowed.txt": "good.casino-spam.com\n",
        "words.txt": "frobnicate\npurple monkey\n",
        "words-de.txt": "quux\n",
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    return {name: tmp_path / name for name in files}


def stage(lists: dict[str, Path], **settings: object) -> BlocklistStage:
    config = BlocklistConfig(
        url_lists=[lists["blocked.txt"]],
        allow_lists=[lists["allowed.txt"]],
        word_lists={"*": [lists["words.txt"]], "de": [lists["words-de.txt"]]},
        **settings,
    )
    blocklist = BlocklistStage(config)
    blocklist.setup()
    return blocklist


def test_domains_subdomains_and_urls_are_blocked_and_allow_lists_win(lists: dict[str, Path]) -> None:
    blocklist = stage(lists)
    texts = [r["text"] for r in sample_records(("manpages",), limit=len(URLS))]
    decision = blocklist.decide(pa.table({"id": [str(i) for i in range(len(texts))], "text": texts, "url": list(URLS)}))
    reasons = {url: decision.drops[row].reason if row in decision.drops else None for row, url in enumerate(URLS)}
    assert reasons == URLS
    detail = decision.drops[0].detail
    assert detail == {"rule": "casino-spam.com", "list": "blocked.txt", "host": "www.casino-spam.com"}
    assert decision.drops[2].detail["rule"] == "ads.co.uk"


# url -> the rule that blocks it (None: kept), for hosts under TLDs the bundled suffix list does not know
# (.test, .example), a known one-label and two-label suffix, an IDN, and IP addresses.
ANY_SUFFIX = {
    "https://cdn.ads-mill.test/x.js": "ads-mill.test",
    "http://a.b.ads-mill.test/": "ads-mill.test",
    "https://ads-mill.test/": "ads-mill.test",
    "https://CDN.Ads-Mill.TEST./page": "ads-mill.test",  # upper case, trailing dot
    "https://bads-mill.test/": None,  # a longer label is another domain
    "https://ads-mill.test.example.com/": None,  # the listed name inside another host
    "https://test/": None,  # a parent of a listed domain is not blocked by it
    "https://shop.xn--bcher-kva.example/": "xn--bcher-kva.example",  # listed as bücher.example
    "https://www.Bücher.example/": "xn--bcher-kva.example",
    "https://bucher.example/": None,
    "https://img.tracker.com/": "tracker.com",
    "https://x.y.spam.co.uk/": "spam.co.uk",
    "https://other.co.uk/": None,  # "co.uk" is listed, but a public suffix blocks nothing below it
    "http://93.184.216.34/": "93.184.216.34",
    "http://1.93.184.216.34.example.org/": None,
    "http://10.93.184.216/": None,  # "184.216" is listed: IP addresses have no parent domains
}


def test_a_listed_domain_blocks_every_subdomain_whatever_the_suffix_list_knows(tmp_path: Path) -> None:
    listed = tmp_path / "any-suffix.txt"
    listed.write_text("ads-mill.test\nbücher.example\ntracker.com\nSPAM.co.uk.\nco.uk\n93.184.216.34\n184.216\n")
    blocklist = BlocklistStage(BlocklistConfig(url_lists=[listed]))
    blocklist.setup()
    texts = [r["text"] for r in sample_records(("manpages",), limit=len(ANY_SUFFIX))]
    decision = blocklist.decide(
        pa.table({"id": [str(i) for i in range(len(texts))], "text": texts, "url": list(ANY_SUFFIX)})
    )
    rules = {
        url: decision.drops[row].detail["rule"] if row in decision.drops else None for row, url in enumerate(ANY_SUFFIX)
    }
    assert rules == ANY_SUFFIX
    assert decision.drops[3].detail["host"] == "cdn.ads-mill.test"


def test_list_words_are_whole_words_in_any_case_and_near_misses_stay(lists: dict[str, Path]) -> None:
    blocklist = stage(lists)
    base = sample_records(("python-docs",), limit=1)[0]["text"]
    planted = {
        "FROBNICATE the widget.": "blocked_words",
        "then purple,\n  MONKEY business": "blocked_words",  # a phrase across whitespace and punctuation
        "the frobnicated widget, unfrobnicate, frobnicates": None,  # substrings inside other words
        "purple and monkey": None,
        "quux": None,  # a German list word in an English document
    }
    texts = [f"{base}\n\n{p}" for p in planted]
    decision = blocklist.decide(pa.table({"id": list("abcde"), "text": texts, "lang": ["en"] * 5}))
    assert {
        p: decision.drops[row].reason if row in decision.drops else None for row, p in enumerate(planted)
    } == planted
    assert decision.drops[0].detail == {"hits": 1, "threshold": 0, "words": ["frobnicate"]}
    german = blocklist.decide(pa.table({"id": ["g"], "text": [f"{base} quux"], "lang": ["de"]}))
    assert german.drops[0].detail["words"] == ["quux"]


def test_the_ratio_variant_keeps_a_rare_word_in_a_long_document(lists: dict[str, Path]) -> None:
    blocklist = stage(lists, max_word_hits=None, max_word_ratio=0.01)
    base = sample_records(("python-docs",), limit=1)[0]["text"]
    n_words = len(base.split())
    texts = [f"{base} frobnicate", " ".join(["frobnicate the widget"] * 50)]
    decision = blocklist.decide(pa.table({"id": ["long", "spam"], "text": texts}))
    assert n_words > 200 and list(decision.drops) == [1]
    assert decision.drops[1].reason == "blocked_word_ratio" and decision.drops[1].detail["value"] == pytest.approx(
        1 / 3
    )


def test_prep_drops_with_the_rule_and_carries_kept_fields(lists: dict[str, Path], tmp_path: Path) -> None:
    records = sample_records(("manpages", "python-docs"), limit=len(URLS))
    for record, url in zip(records, URLS):
        record["url"] = url
    records[-1]["text"] += "\n\nFrobnicate."
    corpus = write_jsonl(tmp_path / "corpus.jsonl", records)
    config = load_config(
        None,
        [
            "prep.stages=[normalize, blocklist]",
            "prep.read.keep_fields=[url, source]",
            f"prep.blocklist.url_lists=[{lists['blocked.txt']}]",
            f"prep.blocklist.allow_lists=[{lists['allowed.txt']}]",
            f"prep.blocklist.word_lists={{'*': [{lists['words.txt']}]}}",
        ],
    )
    config.prep.inputs = [corpus]
    stats = run_prep(config.prep, tmp_path / "out", show_progress=False)
    row = {r.name: r for r in stats.stages}["blocklist"]
    assert row.dropped == {"blocked_domain": 3, "blocked_url": 1, "blocked_words": 1}
    clean = pq.read_table(tmp_path / "out" / "clean")
    assert sorted(clean["url"].to_pylist()) == sorted(u for u, r in list(URLS.items())[:-1] if r is None)
    assert set(clean["source"].to_pylist()) <= {"manpages", "python-docs"}
    lineage = pq.read_table(tmp_path / "out" / "dropped" / "blocklist-00000.parquet").to_pylist()
    details = {r["reason"]: json.loads(r["detail"]) for r in lineage}
    assert details["blocked_url"]["rule"] == "wiki.example.org/Bad_Page"
    assert details["blocked_words"]["url"] == "https://wiki.example.org/Good_Page"
    assert details["blocked_words"]["source"] in ("manpages", "python-docs")


def test_a_missing_list_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="prep.blocklist: file .*nowhere.txt not found"):
        BlocklistConfig(url_lists=[tmp_path / "nowhere.txt"]).fingerprint()


def test_the_default_stages_leave_the_filters_out() -> None:
    assert "blocklist" not in load_config(None, []).prep.stages


def test_list_paths_become_absolute_for_job_scripts() -> None:
    config = load_config(
        None,
        [
            "prep.blocklist.url_lists=[lists/blocked.txt]",
            "prep.blocklist.word_lists={'*': [lists/words.txt]}",
            "prep.decontaminate.eval_sets=[{path: evals/qa.jsonl}]",
        ],
    ).prep.with_absolute_paths()
    assert config.blocklist.url_lists[0] == Path("lists/blocked.txt").resolve()
    assert config.blocklist.word_lists["*"][0] == Path("lists/words.txt").resolve()
    assert config.decontaminate.eval_sets[0].path == Path("evals/qa.jsonl").resolve()
