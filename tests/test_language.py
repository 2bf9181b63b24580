"""Language identification: `languages` keep-lists per source, the Gopher rules for English documents only, and
the language shares in the report. The documents are written here, so a fresh clone runs these too."""

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED_DATA, quick_config

from rain.data import filters
from rain.data.encode import Job, process
from rain.data.filters import DETECTABLE, FilterConfig, detect_language
from rain.data.mixture import load_mixture
from rain.errors import RainError

pytest.importorskip("langid", reason="language identification needs langid: pip install -e '.[lang]'")

PARAGRAPHS = {
    "en": [
        ("The river that runs through the old town was once the main road for trade. Boats carried grain, wool and "
         "timber down to the coast, and the merchants who owned them built the tall houses that still stand along "
         "the water. Today most of the warehouses have been turned into flats and small shops, but the stone steps "
         "where the cargo was unloaded are still there, worn smooth by two centuries of feet."),
        ("In the summer the council runs a ferry between the two bridges. It is slow and it is not cheap, but it is "
         "the best way to see how the town grew out of the river and not the other way round. The trip takes about "
         "forty minutes, and on a warm evening the boat is full of families with their picnics."),
        ("Most visitors come for the market, which has been held in the square every Saturday since the fourteenth "
         "century. The stalls sell cheese, bread, fish from the harbour and vegetables from the farms in the valley, "
         "and the traders still call out their prices the way their grandparents did."),
    ],
    "de": [
        ("Der Fluss, der durch die Altstadt fließt, war früher die wichtigste Handelsstraße der Region. Boote brachten "
         "Getreide, Wolle und Holz zur Küste, und die Kaufleute, denen sie gehörten, bauten die hohen Häuser, die noch "
         "heute am Wasser stehen. Inzwischen sind die meisten Lagerhäuser zu Wohnungen und kleinen Läden umgebaut "
         "worden, aber die steinernen Stufen, an denen die Ladung gelöscht wurde, gibt es immer noch."),
        ("Im Sommer betreibt die Stadt eine Fähre zwischen den beiden Brücken. Sie ist langsam und nicht billig, aber "
         "man sieht von ihr aus am besten, wie die Stadt aus dem Fluss gewachsen ist. Die Fahrt dauert etwa vierzig "
         "Minuten, und an warmen Abenden ist das Boot voller Familien mit ihren Picknickkörben."),
        ("Die meisten Besucher kommen wegen des Marktes, der seit dem vierzehnten Jahrhundert jeden Samstag auf dem "
         "Platz stattfindet. An den Ständen gibt es Käse, Brot, Fisch aus dem Hafen und Gemüse von den Höfen im Tal, "
         "und die Händler rufen ihre Preise noch so aus, wie es schon ihre Großeltern taten."),
    ],
    "ko": [
        ("구시가지를 가로지르는 강은 한때 이 지역에서 가장 중요한 교역로였다. 배들은 곡식과 양모와 목재를 해안까지 "
         "실어 날랐고, 배를 소유한 상인들은 지금도 물가에 서 있는 높은 집들을 지었다. 오늘날 대부분의 창고는 아파트와 "
         "작은 가게로 바뀌었지만, 짐을 내리던 돌계단은 아직도 그대로 남아 있다."),
        ("여름이면 시에서 두 다리 사이를 오가는 나룻배를 운행한다. 느리고 값도 싸지 않지만, 도시가 강에서 어떻게 "
         "자라났는지 보기에는 이보다 좋은 방법이 없다. 배를 타는 데는 사십 분쯤 걸리고, 따뜻한 저녁이면 도시락을 "
         "싸 온 가족들로 배가 가득 찬다."),
        ("대부분의 방문객은 십사 세기부터 토요일마다 광장에서 열려 온 시장을 보러 온다. 가게에서는 치즈와 빵, 항구에서 "
         "잡은 생선, 골짜기 농장의 채소를 팔고, 상인들은 할아버지 세대가 그랬던 것처럼 지금도 큰 소리로 값을 부른다."),
    ],
    "fr": [
        ("La rivière qui traverse la vieille ville était autrefois la principale route commerciale de la région. Des "
         "bateaux transportaient du grain, de la laine et du bois jusqu'à la côte, et les marchands qui les possédaient "
         "ont construit les hautes maisons qui bordent encore l'eau."),
        ("En été, la mairie fait circuler un bac entre les deux ponts. Il est lent et il n'est pas bon marché, mais "
         "c'est la meilleure façon de voir comment la ville est née de la rivière, et non l'inverse."),
    ],
}
# English that breaks Gopher rules: the same line over and over, and a list of keywords without stop words.
JUNK = ["Click here to buy cheap watches online today, best prices guaranteed.\n" * 30,
        " ".join(["cheap watches online discount luxury replica brands sale free shipping"] * 8)]


def documents(lang: str) -> list[str]:
    """Two paragraphs of one language per document, in every order (distinct documents, no duplicates)."""
    return ["\n\n".join(pair) for pair in itertools.permutations(PARAGRAPHS[lang], 2)]


def check(texts: list[str], prose: bool = True, **filter_keys) -> list[str | None]:
    cfg = FilterConfig.from_dict({"quality": True, **filter_keys}, "test")
    return process(texts, Job(cfg, prose, 0, 0.0, tokenizer=None)).reasons


def test_detects_each_language_from_a_sentence_to_a_page():
    for lang, paragraphs in PARAGRAPHS.items():
        for text in [*paragraphs, paragraphs[0].split(". ")[0], *documents(lang)]:
            assert detect_language(text) == lang, text[:60]
    assert detect_language(PARAGRAPHS["en"][0].upper()) == "en"  # lower-cased first: langid reads caps as Kurdish


def test_gopher_rules_check_english_only():
    """German and Korean prose used to fall to the English stop-word rule; English junk still does not pass."""
    assert check(documents("de") + documents("ko") + documents("fr") + documents("en")) == [None] * 20
    assert all(reason and reason.startswith("quality:") for reason in check(JUNK))


def test_keep_list_keeps_its_languages_and_names_the_rest():
    texts = documents("de")[:2] + documents("en")[:2] + documents("ko")[:1] + ["Kurz."]
    assert check(texts, languages=["de"], min_chars=20) == [None, None, "language:en", "language:en", "language:ko",
                                                            "too_short"]
    assert check(texts[:5], prose=False, languages=["de", "ko"], quality=False) == [None, None, "language:en",
                                                                                  "language:en", None]


def test_scores_are_langids_own():
    from langid.langid import LanguageIdentifier, model

    assert DETECTABLE == set(filters.language_model()["classes"])
    langid = LanguageIdentifier.from_modelstring(model)  # unpacked by langid itself, scored by its classify()
    texts = [p for ps in PARAGRAPHS.values() for p in ps] + JUNK + ["", "1234", PARAGRAPHS["en"][0].upper()]
    assert [detect_language(t) for t in texts] == [langid.classify(t[: filters.LANGUAGE_PREFIX_CHARS].lower())[0]
                                                   for t in texts]


def test_the_model_is_unpacked_once_then_read_from_the_cache(tmp_path, monkeypatch):
    m = filters.language_model()
    arrays = {"ptc": m["ptc"].astype(np.float32), "pc": m["pc"], "classes": np.array(m["classes"]),
              "nextmove": np.frombuffer(m["nextmove"], dtype=np.uint16), "ptr": m["ptr"], "features": m["features"]}
    unpacked = []
    monkeypatch.setattr(filters, "_unpack_langid", lambda model: unpacked.append(model) or arrays)  # seconds: skip
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    texts = [p for ps in PARAGRAPHS.values() for p in ps]
    answers = []
    for _ in range(2):
        monkeypatch.setattr(filters, "_language", None)  # a new process
        answers.append([detect_language(t) for t in texts])
    assert len(unpacked) == 1 and len(list(tmp_path.glob("rain/langid-*.npz"))) == 1
    assert answers[0] == answers[1] == [lang for lang, ps in PARAGRAPHS.items() for _ in ps]


def write_mixture(tmp_path, extra: str = "", web_keys: str = "") -> str:
    web = documents("en") + documents("de") + documents("ko") + documents("fr") + JUNK
    (tmp_path / "web.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in web * 3))
    (tmp_path / "de.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in (documents("de") + documents("en")) * 3))
    path = tmp_path / "mix.toml"
    path.write_text(f"""
[filters]
quality = true
{extra}
[[source]]
name = "web"
location = "web.jsonl"
{web_keys}
[[source]]
name = "german"
location = "de.jsonl"
languages = ["de"]
""")
    return str(path)


def test_bad_keep_lists_are_one_line_naming_the_file_and_field(tmp_path, monkeypatch):
    for keys, says in (('languages = ["english"]', "'english' is not an ISO 639-1 code"),
                       ('languages = "en"', "languages must be a list of ISO 639-1 codes")):
        path = write_mixture(tmp_path, web_keys=keys)
        with pytest.raises(RainError) as err:
            load_mixture(path)
        assert path in str(err.value) and "source web" in str(err.value) and says in str(err.value)
        assert "\n" not in str(err.value)
    monkeypatch.setattr(filters, "language_id_available", lambda: False)
    with pytest.raises(RainError, match=r"mix.toml source german: languages needs the language identifier: "
                                        r"pip install 'rain\[lang\]'"):
        load_mixture(write_mixture(tmp_path))


def test_filters_languages_is_for_prose_unless_a_source_asks(tmp_path):
    path = write_mixture(tmp_path, extra='languages = ["en"]')
    text = Path(path).read_text() + '[[source]]\nname = "code"\nkind = "code"\nlocation = "web.jsonl"\n'
    (tmp_path / "mix.toml").write_text(text)
    mix = load_mixture(path)
    assert [mix.source_filters(s).languages for s in mix.sources] == [("en",), ("de",), ()]


def test_prepare_counts_language_drops_and_reports_shares(tmp_path):
    from rain.data.prepare import prepare

    out = tmp_path / "out"
    manifest = prepare(quick_config(mixture=write_mixture(tmp_path), val_fraction=0.1), out, log=lambda *_: None)
    web, german = manifest["filters"]["web"], manifest["filters"]["german"]
    assert set(web) == {"quality"} and web["quality"]["documents"] == 6  # the English junk, three times each
    assert german["language"]["rules"] == {"en": 18} and german["language"]["tokens"] > 0  # estimated from bytes
    assert set(german) == {"language"}
    report = json.loads((out / "report.json").read_text())
    shares = report["sources"]["web"]["languages"]
    assert set(shares["train"]) == {"en", "de", "ko", "fr"} and shares["gopher"] == "english"
    assert sum(c["document_share"] for c in shares["train"].values()) == pytest.approx(1)
    assert shares["not_gopher_checked"] == 3 * (6 + 6 + 2)  # German, Korean, French: train and validation
    assert set(report["sources"]["german"]["languages"]["train"]) == {"de"}
    md = (out / "report.md").read_text()
    assert "- web: Gopher rules: English only (42 non-English documents not checked)" in md
    assert "| german | de | " in md and "| web | ko | " in md and "| german | language | 18 |" in md


def test_without_langid_prose_keeps_the_old_gopher_rules_and_says_so(tmp_path, monkeypatch):
    from rain.data.prepare import prepare

    monkeypatch.setattr(filters, "language_id_available", lambda: False)
    path = write_mixture(tmp_path)
    (tmp_path / "mix.toml").write_text(Path(path).read_text().split("[[source]]\nname = \"german\"")[0])
    logged = []
    manifest = prepare(quick_config(mixture=path, val_fraction=0.5), tmp_path / "out", log=logged.append)
    assert [line for line in logged if "langid is not installed" in line] == [
        ("note: langid is not installed, so the Gopher rules (written for English) check every document of web, "
         "whatever its language; pip install 'rain[lang]' to check English only")]
    assert manifest["filters"]["web"]["quality"]["rules"]["stop_words"] >= 3 * (6 + 6)  # German and Korean
    assert "- web: Gopher rules: every document, whatever its language" in (tmp_path / "out/report.md").read_text()


@pytest.mark.shared_data
def test_c4_is_english_to_langid():
    texts = [json.loads(line)["text"] for line in (SHARED_DATA / "corpus/c4_demo/c4_demo.jsonl").read_text().splitlines()]
    other = [t[:80] for t in texts if detect_language(t) != "en"]
    assert len(texts) == 300 and len(other) <= 3, other  # one keyword-spam page reads as French
