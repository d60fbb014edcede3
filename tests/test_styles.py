"""Prompt styles (A1111 styles.csv) and structured templates, on real files in tmp_path."""

from __future__ import annotations

import codecs
import csv
import io
import json
import os

import pytest

from studio.errors import InputError, NotFound, StudioError
from studio.styles import MAX_STYLE_ROWS, STYLES_FILENAME, ImportResult, Style, StyleBook, merge_prompt
from studio.templates import TEMPLATE_FIELD_NAMES, TEMPLATE_FIELDS, TemplateBook, compose

BOM = codecs.BOM_UTF8
# What an A1111 install writes (utf-8-sig, csv's \r\n) plus what artists do by hand: quoted commas and quotes,
# a prompt over two lines, a comment row, an extra column A1111 ignores.
A1111_CSV = BOM + (
    'name,prompt,negative_prompt,notes\r\n'
    'Cinematic,"cinematic still of {prompt}, shallow depth of field","anime, cartoon",mine\r\n'
    '# old ones below,,,\r\n'
    'Oil,"oil painting, ""impasto"", thick brush","photo, blurry",\r\n'
    'Two lines,"first line\r\nsecond line",,\r\n'
    'Plain,highly detailed,,\r\n'
).encode()


def a1111_reads(path):
    """What A1111's StyleDatabase reads from a file: its exact csv call, and its name -> texts dict."""
    with open(path, encoding="utf-8-sig", newline="") as handle:
        rows = list(csv.DictReader(handle, skipinitialspace=True))
    return {row["name"]: (row["prompt"] if "prompt" in row else row["text"], row.get("negative_prompt") or "")
            for row in rows if row["name"] and not row["name"].startswith("#")}


@pytest.fixture
def book(tmp_path):
    (tmp_path / STYLES_FILENAME).write_bytes(A1111_CSV)
    return StyleBook.in_data_dir(tmp_path)


# --- reading ------------------------------------------------------------------------------------------------------

def test_an_a1111_file_with_bom_crlf_quotes_and_extra_columns_is_read_as_a1111_reads_it(book):
    assert book.names() == ["Cinematic", "Oil", "Two lines", "Plain"]
    assert book.get("Oil") == Style("Oil", 'oil painting, "impasto", thick brush', "photo, blurry")
    assert book.get("Two lines").prompt == "first line\r\nsecond line"
    assert book.get("Plain") == Style("Plain", "highly detailed", "")
    assert {s.name: (s.prompt, s.negative_prompt) for s in book.styles()} == a1111_reads(book.path)
    assert book.problem is None


def test_lf_no_bom_old_text_column_and_spaces_after_commas(tmp_path):
    path = tmp_path / "styles.csv"
    path.write_bytes(b'name, text\nOld, "dark, moody"\nShort\n\nRepeated,first\nRepeated,second\n')
    book = StyleBook(path)
    # a repeated name keeps its first place and takes the later text (A1111 fills a dict); a short row is empty
    assert book.names() == ["Old", "Short", "Repeated"]
    assert book.get("Old") == Style("Old", "dark, moody", "")
    assert book.get("Short") == Style("Short", "", "")
    assert book.get("Repeated").prompt == "second"


def test_a_missing_file_is_an_empty_book_and_unknown_names_are_not_found(tmp_path):
    book = StyleBook(tmp_path / "none" / "styles.csv")
    assert book.names() == [] and book.problem is None
    with pytest.raises(NotFound, match="no styles yet"):
        book.get("x")


def test_the_file_is_reread_when_it_changes_on_disk_and_only_then(book):
    assert book.load() is True and book.load() is False
    book.path.write_bytes(b"name,prompt,negative_prompt\nNew,fresh,\n")
    assert book.load() is True
    assert book.names() == ["New"]
    book.path.unlink()
    assert book.names() == []


# --- applying ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("style", "prompt", "expected"), [
    # the strings A1111's merge_prompts gives
    ("cinematic still of {prompt}, shallow depth of field", "a cat", "cinematic still of a cat, shallow depth of field"),
    ("highly detailed", "a cat", "a cat, highly detailed"),
    (" highly detailed ", "  a cat  ", "a cat, highly detailed"),  # the appended parts are trimmed
    ("highly detailed", "", "highly detailed"),
    ("", "a cat", "a cat"),
    ("photo of {prompt}", "", "photo of "),  # the placeholder is filled even with nothing
    ("{prompt}, {prompt}", " a cat", " a cat,  a cat"),  # every placeholder, and the prompt untrimmed
    ("8k", "a cat,", "a cat,, 8k"),
])
def test_merge_prompt_gives_what_a1111_gives(style, prompt, expected):
    assert merge_prompt(style, prompt) == expected


def test_apply_fills_both_prompts_and_stacks_styles_in_the_given_order(tmp_path):
    book = StyleBook(tmp_path / "styles.csv")
    book.save("Wrap", "({prompt}:1.2)", "ugly, {prompt}")
    book.save("Tail", "8k", "blurry")
    assert book.apply("a cat", "", ["Wrap", "Tail"]) == ("(a cat:1.2), 8k", "ugly,, blurry")  # A1111 trims "ugly, " first
    assert book.apply("a cat", "lowres", ["Tail", "Wrap"]) == ("(a cat, 8k:1.2)", "ugly, lowres, blurry")
    assert book.apply("a cat", "lowres", ["Tail", "Tail"]) == ("a cat, 8k, 8k", "lowres, blurry, blurry")
    assert book.apply("a cat", None, []) == ("a cat", "")
    assert book.apply("a cat", "x", ["", None]) == ("a cat", "x")  # a cleared dropdown is no style
    assert book.apply(None, None, "Tail") == ("8k", "blurry")  # one name as a string is one style


def test_apply_refuses_an_unknown_style_naming_it_and_the_known_ones(book):
    with pytest.raises(InputError) as caught:
        book.apply("a cat", "", ["Oil", "Watercolor"])
    assert caught.value.field == "styles"
    assert "'Watercolor' is unknown" in caught.value.message
    assert "Cinematic, Oil, Two lines, Plain" in caught.value.message


# --- saving and deleting -------------------------------------------------------------------------------------------

def test_saving_a_new_style_appends_a_row_and_keeps_every_other_row_and_the_files_form(book):
    book.save("  Neon  ", "neon lights, {prompt}", "dull")
    data = book.path.read_bytes()
    assert data.startswith(A1111_CSV)  # every old row byte for byte: comment, extra column, two-line cell
    assert data[len(A1111_CSV):] == b'Neon,"neon lights, {prompt}",dull\r\n'
    assert book.names() == ["Cinematic", "Oil", "Two lines", "Plain", "Neon"]
    assert a1111_reads(book.path)["Neon"] == ("neon lights, {prompt}", "dull")
    assert StyleBook(book.path).get("Neon") == Style("Neon", "neon lights, {prompt}", "dull")


def test_replacing_a_style_rewrites_its_row_in_place(book):
    book.save("Oil", "watercolor, wet", "")
    assert book.names() == ["Cinematic", "Oil", "Two lines", "Plain"]
    lines = book.path.read_bytes().decode("utf-8-sig").split("\r\n")
    assert lines[3] == 'Oil,"watercolor, wet",,'
    assert lines[1].endswith(",mine") and lines[2] == "# old ones below,,,"
    assert a1111_reads(book.path)["Oil"] == ("watercolor, wet", "")


def test_replacing_a_repeated_name_leaves_one_row_in_the_first_place(tmp_path):
    path = tmp_path / "styles.csv"
    path.write_bytes(b"name,prompt,negative_prompt\nA,1,\nB,2,\nA,3,\n")
    StyleBook(path).save("A", "4", "")
    assert path.read_bytes() == b"name,prompt,negative_prompt\nA,4,\nB,2,\n"


def test_an_old_file_without_a_negative_column_gets_one_when_needed(tmp_path):
    path = tmp_path / "styles.csv"
    path.write_bytes(b"name,text\nOld,dark,overflow\n")
    book = StyleBook(path)
    book.save("New", "bright", "")
    assert path.read_bytes() == b"name,text\nOld,dark,overflow\nNew,bright\n"
    book.save("Neg", "p", "n")
    assert path.read_bytes() == b"name,text,negative_prompt\nOld,dark,,overflow\nNew,bright\nNeg,p,n\n"
    assert a1111_reads(path) == {"Old": ("dark", ""), "New": ("bright", ""), "Neg": ("p", "n")}


def test_texts_are_kept_exactly_edge_spaces_quotes_and_unicode(tmp_path):
    book = StyleBook(tmp_path / "styles.csv")
    text = ' leading, "quoted" and trailing \n 猫, café '
    book.save("Exact", text, "\tneg")
    assert StyleBook(book.path).get("Exact") == Style("Exact", text, "\tneg")
    assert a1111_reads(book.path)["Exact"] == (text, "\tneg")
    assert book.path.read_bytes().startswith(BOM + b"name,prompt,negative_prompt\r\n")  # A1111's form for new files


@pytest.mark.parametrize(("name", "why"), [
    ("", "empty"), ("   ", "empty"), ("a\nb", "line break"), ("a\u2028b", "line break"), ("x" * 101, "101 char"),
    ("#x", "comment"), (None, "not a style name"), ("a\0b", "NUL"),
])
def test_bad_style_names_are_refused_and_nothing_is_written(book, name, why):
    with pytest.raises(InputError, match=why) as caught:
        book.save(name, "p", "")
    assert caught.value.field == "style_name"
    assert book.path.read_bytes() == A1111_CSV


@pytest.mark.parametrize(("prompt", "negative", "field"), [
    ("a\0b", "", "style_prompt"), ("x" * 20_001, "", "style_prompt"), ("ok", "\ud800", "style_negative_prompt"),
    (3, "", "style_prompt"),
])
def test_bad_style_texts_are_refused_and_nothing_is_written(book, prompt, negative, field):
    with pytest.raises(InputError) as caught:
        book.save("Name", prompt, negative)
    assert caught.value.field == field
    assert book.path.read_bytes() == A1111_CSV


def test_a_name_of_100_characters_is_accepted(tmp_path):
    book = StyleBook(tmp_path / "styles.csv")
    book.save("n" * 100, "p")
    assert book.names() == ["n" * 100]


def test_delete_removes_only_that_style(book):
    book.delete("Oil")
    assert book.names() == ["Cinematic", "Two lines", "Plain"]
    text = book.path.read_bytes().decode("utf-8-sig")
    assert "Oil" not in text and "# old ones below,,," in text and ",mine" in text
    with pytest.raises(NotFound, match="'Oil' is unknown"):
        book.delete("Oil")


def test_a_save_sees_a_change_made_on_disk_since_the_last_read(book):
    assert "Plain" in book.names()
    book.path.write_bytes(b"name,prompt,negative_prompt\nTheirs,from A1111,\n")
    book.save("Mine", "p")
    assert StyleBook(book.path).names() == ["Theirs", "Mine"]


# --- a damaged own file --------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("data", "why"), [
    (b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR", "binary"),
    ("name,prompt\nCaf\xe9,x\n".encode("latin-1"), "not UTF-8"),
    (b'{"styles": []}', "no name and prompt columns"),
])
def test_an_unreadable_own_file_is_reported_and_never_overwritten(book, tmp_path, data, why):
    book.path.write_bytes(data)
    assert book.names() == []
    assert why in book.problem and str(book.path) in book.problem and "move it aside" in book.problem
    for change in (lambda: book.save("New", "p"), lambda: book.delete("Oil"),
                   lambda: book.import_from(write_a1111(tmp_path / "a1111", [["Other", "p", ""]]))):
        with pytest.raises(StudioError, match="will not overwrite"):
            change()
    with pytest.raises(InputError, match="cannot be used"):
        book.apply("a cat", "", ["Oil"])
    assert book.path.read_bytes() == data
    book.path.write_bytes(A1111_CSV)  # fixed: the book works again
    book.save("New", "p")
    assert book.problem is None and book.names()[-1] == "New"


# --- importing -----------------------------------------------------------------------------------------------------

def write_a1111(folder, rows, header="name,prompt,negative_prompt"):
    folder.mkdir(parents=True, exist_ok=True)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(header.split(","))
    writer.writerows(rows)
    (folder / "styles.csv").write_bytes(BOM + out.getvalue().encode())
    return folder / "styles.csv"


def test_import_adds_new_skips_identical_and_renames_clashes(tmp_path):
    book = StyleBook(tmp_path / "data" / "styles.csv")
    book.save("Same", "s", "n")
    book.save("Clash", "mine", "")
    a1111 = write_a1111(tmp_path / "stable-diffusion-webui", [
        ["Same", "s", "n"], ["Clash", "theirs", ""], ["New", "fresh, {prompt}", "bad"], ["# comment", "", ""]])
    result = book.import_from(tmp_path / "stable-diffusion-webui")  # the A1111 folder
    assert result == ImportResult(added=1, skipped=1, renamed=1) and result == (1, 1, 1)
    assert book.names() == ["Same", "Clash", "Clash (imported)", "New"]
    assert book.get("Clash") == Style("Clash", "mine", "")  # the artist's own is never overwritten
    assert book.get("Clash (imported)") == Style("Clash (imported)", "theirs", "")
    assert book.get("New") == Style("New", "fresh, {prompt}", "bad")
    before = book.path.read_bytes()
    assert book.import_from(a1111) == (0, 3, 0)  # again (the file itself): nothing new, nothing written
    assert book.path.read_bytes() == before
    write_a1111(a1111.parent, [["Clash", "third", ""]])
    assert book.import_from(a1111) == (0, 0, 1)
    assert book.get("Clash (imported 2)").prompt == "third"


def test_an_imported_clash_with_a_long_name_is_renamed_within_the_name_limit(tmp_path):
    book = StyleBook(tmp_path / "styles.csv")
    book.save("L" * 100, "mine")
    assert book.import_from(write_a1111(tmp_path / "a1111", [["L" * 100, "theirs", ""]])) == (0, 0, 1)
    assert book.names()[1] == "L" * 89 + " (imported)" and len(book.names()[1]) == 100


def big_file(path):
    path.write_bytes(b"name,prompt,negative_prompt\n" + b"x," + b"y" * (5 * 2**20) + b",\n")


def many_rows(path):
    path.write_bytes(b"name,prompt,negative_prompt\n" + b"".join(b"s%d,p,\n" % i for i in range(MAX_STYLE_ROWS + 1)))


@pytest.mark.parametrize(("make", "why"), [
    (lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR" + bytes(range(256))), "binary file"),
    (lambda p: p.write_text('{"name": "not a csv"}'), "no name and prompt columns"),
    (lambda p: p.write_text("hello world\n"), "no name and prompt columns"),
    (lambda p: p.write_bytes("name,prompt\nCaf\xe9,x\n".encode("latin-1")), "not UTF-8"),
    (lambda p: p.write_bytes(b""), "is empty"),
    (big_file, "5.0 MB"),
    (many_rows, "more than 10,000 rows"),
    (lambda p: p.write_text("name,prompt\nok,fine\nlong," + "x" * 20_001 + "\n"), "line 3, style 'long'"),
    (lambda p: p.write_text('name,prompt\n"two\nlines",x\n'), "line break"),
    (lambda p: p.write_text("name,prompt\n" + "n" * 101 + ",x\n"), "101 characters"),
    (lambda p: p.write_text('name,prompt\nok,"' + "x" * 200_000 + '"\n'), "not a readable CSV"),
])
def test_a_bad_import_file_is_refused_with_nothing_written(book, tmp_path, make, why):
    source = tmp_path / "import" / "styles.csv"
    source.parent.mkdir()
    make(source)
    with pytest.raises(InputError, match=why) as caught:
        book.import_from(source)
    assert caught.value.field == "styles_file"
    assert book.path.read_bytes() == A1111_CSV
    assert sorted(os.listdir(book.path.parent)) == ["import", "styles.csv"]  # no temp file left either


def test_import_from_a_missing_path_or_a_folder_without_styles(book, tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        book.import_from(tmp_path / "nowhere.csv")
    (tmp_path / "empty-a1111").mkdir()
    with pytest.raises(InputError, match="holds no styles.csv"):
        book.import_from(tmp_path / "empty-a1111")
    assert book.path.read_bytes() == A1111_CSV


def test_an_import_that_would_pass_the_row_limit_is_refused(tmp_path):
    own = tmp_path / "data" / "styles.csv"
    own.parent.mkdir()
    own.write_bytes(b"name,prompt\n" + b"".join(b"s%d,p\n" % i for i in range(MAX_STYLE_ROWS)))
    before = own.read_bytes()
    with pytest.raises(InputError, match="10,001 rows") as caught:
        StyleBook(own).import_from(write_a1111(tmp_path / "a1111", [["extra", "p", ""]]))
    assert caught.value.field == "styles_file" and own.read_bytes() == before


# --- templates -----------------------------------------------------------------------------------------------------

def test_template_fields_are_in_prompt_order_with_labels():
    assert TEMPLATE_FIELD_NAMES == ("subject", "style", "lighting", "camera", "mood", "composition")
    assert dict(TEMPLATE_FIELDS)["camera"] == "Camera / lens"
    assert all(label for _, label in TEMPLATE_FIELDS)


def test_compose_joins_filled_fields_in_order_trimmed_commas_inside_kept():
    values = {"composition": "rule of thirds", "subject": "  a red fox  ", "camera": "85mm, f/1.8",
              "lighting": "", "mood": "   ", "style": "oil painting, impasto,"}
    assert compose(values) == "a red fox, oil painting, impasto, 85mm, f/1.8, rule of thirds"
    assert compose({"subject": "cat"}) == "cat"
    assert compose({"mood": None}) == "" and compose({}) == ""


@pytest.mark.parametrize(("values", "field"), [({"subjekt": "cat"}, "template"), ({"subject": 3}, "template.subject"),
                                               ({"mood": "a\0b"}, "template.mood"), (["subject"], "template")])
def test_compose_refuses_unknown_fields_and_non_text(values, field):
    with pytest.raises(InputError) as caught:
        compose(values)
    assert caught.value.field == field


def test_templates_save_get_replace_delete_and_survive_a_new_book(tmp_path):
    book = TemplateBook.in_data_dir(tmp_path / "data")
    assert book.names() == []
    book.save("Portrait", {"subject": "an old sailor", "camera": "85mm"})
    book.save("Landscape", {"subject": "fjord at dawn", "lighting": "golden hour"})
    book.save("Portrait", {"subject": "a young sailor"})
    assert book.names() == ["Portrait", "Landscape"]
    assert book.get("Portrait") == {**dict.fromkeys(TEMPLATE_FIELD_NAMES, ""), "subject": "a young sailor"}
    other = TemplateBook(tmp_path / "data" / "templates.json")
    assert other.names() == ["Portrait", "Landscape"]
    assert compose(other.get("Landscape")) == "fjord at dawn, golden hour"
    other.delete("Portrait")
    assert book.names() == ["Landscape"]  # the first book sees the other's write
    with pytest.raises(NotFound, match="'Portrait' is unknown; known templates: Landscape"):
        book.get("Portrait")
    with pytest.raises(InputError) as caught:
        book.save("bad\nname", {})
    assert caught.value.field == "template_name"
    stored = json.loads((tmp_path / "data" / "templates.json").read_text())
    assert stored["version"] == 1 and list(stored["templates"]) == ["Landscape"]


def test_a_template_file_keeps_what_it_does_not_know_about_other_templates(tmp_path):
    path = tmp_path / "templates.json"
    path.write_text(json.dumps({"version": 1, "templates": {"Old": {"subject": "s", "seed_hint": 7}}}))
    book = TemplateBook(path)
    book.save("New", {"mood": "calm"})
    assert json.loads(path.read_text())["templates"]["Old"] == {"subject": "s", "seed_hint": 7}


@pytest.mark.parametrize(("text", "why"), [
    ('{"version": 1, "templates": {"A": {"subject": "x"}', "not valid JSON"),
    ('[1, 2]', "not a templates file"),
    ('{"version": 1, "templates": {"A": "x"}}', "not an object of fields"),
    ('{"version": 1, "templates": {"A": {"mood": 5}}}', "mood = 5, not text"),
    ('{"version": 9, "templates": {}}', "newer studio"),
    ('{"templates": {}}', "no valid format version"),
    ("[" * 100_000 + "]" * 100_000, "too deeply"),
])
def test_a_damaged_template_file_is_reported_and_saves_are_refused_until_it_is_fixed(tmp_path, text, why):
    path = tmp_path / "templates.json"
    path.write_text(text)
    book = TemplateBook(path)
    assert book.names() == []
    assert why in book.problem and str(path) in book.problem and "move it aside" in book.problem
    for change in (lambda: book.save("A", {"subject": "y"}), lambda: book.delete("A")):
        with pytest.raises(StudioError, match="will not overwrite") as caught:
            change()
        assert caught.value.field == "templates_file"
    with pytest.raises(NotFound, match="cannot be used"):
        book.get("A")
    assert path.read_text() == text
    path.rename(tmp_path / "templates.json.broken")  # moved aside: saving works again
    book.save("A", {"subject": "y"})
    assert book.problem is None and book.names() == ["A"]
