"""`rain publish`: a dry run lists what would be sent; without a token, offline or unreachable, one clear line."""

import pytest

from rain.cli import main

huggingface_hub = pytest.importorskip("huggingface_hub")


@pytest.fixture
def export(tmp_path):
    folder = tmp_path / "export"
    folder.mkdir()
    for name, size in [("config.json", 10), ("model.safetensors", 3000), ("tokenizer.json", 200), ("README.md", 50)]:
        (folder / name).write_bytes(b"x" * size)
    (folder / ".cache").mkdir()
    (folder / ".cache" / "lock").write_text("not sent")
    return folder


def run(args, capsys):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err.strip()


def one_line_error(result, fragment):
    code, _, err = result
    assert code == 2 and err.startswith("rain: error:") and "\n" not in err and fragment in err, err


@pytest.fixture
def online_without_login(monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)


def test_dry_run_lists_the_files_and_sends_nothing(export, capsys, monkeypatch):
    monkeypatch.setattr(huggingface_hub, "HfApi", None)  # any use of the Hub would fail
    code, out, _ = run(["publish", export, "--repo", "me/tiny-rain", "--private", "--dry-run"], capsys)
    assert code == 0
    lines = out.splitlines()
    assert "would upload 4 files" in lines[0] and "private model repo me/tiny-rain" in lines[0]
    assert [line.split()[0] for line in lines[1:]] == ["README.md", "config.json", "model.safetensors", "tokenizer.json"]
    assert ".cache" not in out and "2.9 KB" in out


def test_offline_or_without_a_token_is_one_line(export, capsys, monkeypatch, online_without_login):
    one_line_error(run(["publish", export, "--repo", "me/tiny-rain"], capsys), "no Hugging Face token: set HF_TOKEN")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    one_line_error(run(["publish", export, "--repo", "me/tiny-rain"], capsys), "HF_HUB_OFFLINE is set")


def test_hub_errors_are_one_line_and_uploads_go_to_the_repo(export, capsys, monkeypatch, online_without_login):
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    calls = {}

    class UnreachableHub:
        def __init__(self, token):
            calls["token"] = token

        def create_repo(self, repo_id, **kw):
            raise ConnectionError("Failed to resolve 'huggingface.co'\nmore detail")

    monkeypatch.setattr(huggingface_hub, "HfApi", UnreachableHub)
    one_line_error(run(["publish", export, "--repo", "me/tiny-rain"], capsys),
                   "could not publish to me/tiny-rain: Failed to resolve 'huggingface.co'")
    assert calls["token"] == "hf_not_a_real_token"

    class Hub(UnreachableHub):
        def create_repo(self, repo_id, **kw):
            calls["create"] = (repo_id, kw)
            return huggingface_hub.RepoUrl(f"https://huggingface.co/{repo_id}")

        def upload_folder(self, **kw):
            calls["upload"] = kw

    monkeypatch.setattr(huggingface_hub, "HfApi", Hub)
    code, out, _ = run(["publish", export, "--repo", "me/tiny-rain", "--private"], capsys)
    assert code == 0 and "published 4 files to https://huggingface.co/me/tiny-rain" in out
    assert calls["create"] == ("me/tiny-rain", {"private": True, "exist_ok": True, "repo_type": "model"})
    assert calls["upload"]["folder_path"] == str(export) and calls["upload"]["repo_id"] == "me/tiny-rain"


def test_not_an_export_or_a_bad_repo_name(export, tmp_path, capsys):
    one_line_error(run(["publish", tmp_path / "none", "--repo", "me/x", "--dry-run"], capsys), "no such folder")
    (export / "model.safetensors").unlink()
    one_line_error(run(["publish", export, "--repo", "me/x", "--dry-run"], capsys), "missing model.safetensors")
    (export / "model.safetensors").write_text("x")
    one_line_error(run(["publish", export, "--repo", "a/b/c", "--dry-run"], capsys), "expected NAME or OWNER/NAME")
