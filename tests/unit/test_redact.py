"""Central redaction of secrets in hyper-parameters and configs."""

from __future__ import annotations

import copy
import json
import types
from pathlib import Path

import pytest

from tracklink.redact import (
    MAX_REDACTED_FILE_BYTES,
    REDACTED,
    is_secret_key,
    redact,
    redact_text,
    redacted_file_text,
    redacted_upload,
    secret_env_values,
)
from tracklink.tracker import EnvVar, Tracker, hyperparameters

SECRET_KEYS = [
    "hub_token", "api_key", "WANDB_API_KEY", "AWS_SECRET_ACCESS_KEY", "db_password", "credentials",
    "NEPTUNE_API_TOKEN", "HF_TOKEN", "push_to_hub_token", "authToken", "apiKey", "COMET_API_KEY", "client_secret",
    "private_key", "ssh_key", "mlflow_tracking_password", "AZURE_STORAGE_SAS", "Authorization", "secret",
    "passwd", "my-access-key",
]
NOT_SECRET_KEYS = [
    "pad_token_id", "eos_token", "bos_token_id", "max_new_tokens", "num_input_tokens_seen", "tokenizer_class",
    "metric_for_best_model", "hub_private_repo", "pad_token", "additional_special_tokens", "vocab_size",
    "max_tokens", "hub_model_id", "sort_key", "key", "learning_rate", "output_dir", "run_name", "keys",
    "include_tokens_per_second", "tokenizer_name",
]


@pytest.mark.parametrize("key", SECRET_KEYS)
def test_secret_keys(key: str) -> None:
    assert is_secret_key(key) is True


@pytest.mark.parametrize("key", NOT_SECRET_KEYS)
def test_not_secret_keys(key: str) -> None:
    assert is_secret_key(key) is False


@pytest.mark.parametrize("key", [None, 3, ("api_key",), b"api_key", ""])
def test_non_string_or_empty_keys_are_not_secret(key: object) -> None:
    assert is_secret_key(key) is False


def test_secret_values_replaced_in_nested_mappings() -> None:
    config = {
        "learning_rate": 0.1,
        "hub_token": "hf_xxxxxxxxxxxxxxxxx",
        "nested": {"api_key": "k-123456", "pad_token_id": 0, "eos_token": "</s>", "inner": [{"password": "pw"}]},
        "tuple": ("a", {"credentials": {"user": "u"}}),
        "empty_token": None,
        "blank_secret": "",
    }
    out = redact(config, env_secrets=[])
    assert out["learning_rate"] == 0.1
    assert out["hub_token"] == REDACTED
    assert out["nested"]["api_key"] == REDACTED
    assert out["nested"]["pad_token_id"] == 0 and out["nested"]["eos_token"] == "</s>"
    assert out["nested"]["inner"] == [{"password": REDACTED}]
    assert isinstance(out["tuple"], tuple) and out["tuple"][1] == {"credentials": REDACTED}
    # an unset secret stays visibly unset
    assert out["empty_token"] is None and out["blank_secret"] == ""


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("https://user:hunter2@example.com/path", f"https://{REDACTED}@example.com/path"),
        ("postgresql://bob:s3cret@db:5432/mlflow", f"postgresql://{REDACTED}@db:5432/mlflow"),
        ("http://:onlypass@host", f"http://{REDACTED}@host"),
        ("https://h/x?token=abc123&page=2", f"https://h/x?token={REDACTED}&page=2"),
        ("https://h/x?a=1&api_key=zzz#frag", f"https://h/x?a=1&api_key={REDACTED}#frag"),
        ("s3://b/o?X-Amz-Signature=deadbeef&X-Amz-Date=1", f"s3://b/o?X-Amz-Signature={REDACTED}&X-Amz-Date=1"),
        ("see https://a:b@h1 and https://c:d@h2", f"see https://{REDACTED}@h1 and https://{REDACTED}@h2"),
        ("https://example.com/path?page=2", "https://example.com/path?page=2"),
        ("user@example.com", "user@example.com"),
        ("git@github.com:org/repo.git", "git@github.com:org/repo.git"),
    ],
)
def test_url_credentials_masked(text: str, expected: str) -> None:
    assert redact_text(text) == expected
    assert redact({"tracking_uri": text}, env_secrets=[])["tracking_uri"] == expected


# Credentials in a URL's user part are masked whole (a user name cannot be told from a token, and tokens
# go in either place: https://TOKEN@, https://TOKEN:x-oauth-basic@, https://TOKEN:@), up to the
# authority's last "@"; ssh-family URLs keep the login name (ssh never carries a secret there).
TOKEN_ONLY_MASKED = [
    ("https://ghp_abc123@github.com/x.git", f"https://{REDACTED}@github.com/x.git"),
    ("https://hf_xxxxxxxxxxxxxxxx@huggingface.co", f"https://{REDACTED}@huggingface.co"),
    ("https://hf_xxx@huggingface.co/datasets/org/set", f"https://{REDACTED}@huggingface.co/datasets/org/set"),
    ("git+https://glpat-AbC_123-xyz@gitlab.com/g/p.git@v1.0", f"git+https://{REDACTED}@gitlab.com/g/p.git@v1.0"),
    ("HTTP://Tok3n@HOST:8080/api", f"HTTP://{REDACTED}@HOST:8080/api"),
    ("https://npm_token%2Fpart@registry.example", f"https://{REDACTED}@registry.example"),
    ("postgresql://bob@db:5432/mlflow", f"postgresql://{REDACTED}@db:5432/mlflow"),
    ("pip install git+https://ghp_abc123@github.com/o/r.git#egg=r",
     f"pip install git+https://{REDACTED}@github.com/o/r.git#egg=r"),
    ("clone https://ghp_a1@github.com/a and https://hf_b2@huggingface.co/b, then ssh://git@github.com/c",
     f"clone https://{REDACTED}@github.com/a and https://{REDACTED}@huggingface.co/b, then ssh://git@github.com/c"),
    ("remote=https://ghp_abc123@github.com/x.git?token=zzz",
     f"remote=https://{REDACTED}@github.com/x.git?token={REDACTED}"),
    (f"https://{REDACTED}@github.com/x.git", f"https://{REDACTED}@github.com/x.git"),  # masking twice: the same
    ("https://ghp_SECRET123:x-oauth-basic@github.com/o/r.git", f"https://{REDACTED}@github.com/o/r.git"),
    ("https://FURYTOKEN:@pypi.fury.io/team/", f"https://{REDACTED}@pypi.fury.io/team/"),
    ("https://tok@en@host/x", f"https://{REDACTED}@host/x"),  # a raw "@" in the token
    ("https://user:p@ss@host", f"https://{REDACTED}@host"),
    ("https://app/callback#access_token=abc123&state=1", f"https://app/callback#access_token={REDACTED}&state=1"),
    ("ssh://deploy:p@ss@host/srv", f"ssh://deploy:{REDACTED}@host/srv"),
]
NOT_CREDENTIALS = [
    "ssh://git@github.com/org/repo.git",
    "git+ssh://git@github.com/org/repo.git",
    "SSH://deploy@build-host:2222/srv",
    "sftp://uploader@files.example.com/incoming",
    "git@github.com:org/repo.git",
    "user@example.com",
    "mail first.last+tag@example.co.uk about it",
    "mailto:team@example.com",
    "https://registry.npmjs.org/@babel/core",
    "https://medium.com/@author/post",
    "https://example.com/path?who=a@b.c#x@y",
    "see https://example.com and write to ops@example.com",
    "model@v2 trained with lr=0.1",
]


@pytest.mark.parametrize(("text", "expected"), TOKEN_ONLY_MASKED)
def test_token_only_url_credentials_masked(text: str, expected: str) -> None:
    assert redact_text(text) == expected
    assert redact({"remote": text, "list": [text]}, env_secrets=[]) == {"remote": expected, "list": [expected]}


@pytest.mark.parametrize("text", NOT_CREDENTIALS)
def test_user_names_and_addresses_outside_credentials_are_kept(text: str) -> None:
    assert redact_text(text) == text


def test_ssh_url_password_is_still_masked() -> None:
    assert redact_text("ssh://deploy:hunter22@host/srv") == f"ssh://deploy:{REDACTED}@host/srv"


def test_env_secret_values_masked_inside_strings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_SERVICE_TOKEN", "tok-0123456789")
    monkeypatch.setenv("HARMLESS_SETTING", "tok-0123456789-not-a-secret-name")
    values = secret_env_values()
    assert "tok-0123456789" in values
    assert "tok-0123456789-not-a-secret-name" not in values
    out = redact({"note": "use tok-0123456789 here", "list": ["x tok-0123456789 y"]})
    assert out == {"note": f"use {REDACTED} here", "list": [f"x {REDACTED} y"]}


def test_short_env_values_are_not_masked_everywhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOME_PASSWORD", "ab")  # too short: masking "ab" everywhere would mangle text
    assert redact({"note": "abc"}) == {"note": "abc"}


def test_declared_secret_names_are_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    class DeclaringTracker(Tracker):
        name = "declaring"
        env_vars = (EnvVar("ODD_NAME_NO_HINT", secret=True),)

    monkeypatch.setenv("ODD_NAME_NO_HINT", "value-that-is-secret")
    assert "ODD_NAME_NO_HINT" in Tracker.declared_secret_names()
    assert "value-that-is-secret" in secret_env_values(Tracker.declared_secret_names())
    assert "value-that-is-secret" not in secret_env_values()
    args = types.SimpleNamespace(output_dir="/runs/value-that-is-secret", learning_rate=0.5)
    config, args_view, _ = hyperparameters(args)
    assert config["output_dir"] == f"/runs/{REDACTED}" and args_view["learning_rate"] == 0.5


def test_user_objects_are_not_mutated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEMO_API_KEY", "k-abcdefgh")
    inner = {"password": "pw", "uri": "https://u:p@h", "note": "k-abcdefgh"}
    items = [inner, "https://a:b@c", ("k-abcdefgh",)]
    config = {"hub_token": "t", "items": items, "inner": inner}
    before = copy.deepcopy(config)
    out = redact(config)
    assert config == before
    assert config["inner"] is inner and config["items"] is items
    assert out["inner"] is not inner and out["items"] is not items
    assert out["inner"] == {"password": REDACTED, "uri": f"https://{REDACTED}@h", "note": REDACTED}


def test_other_values_pass_through() -> None:
    marker = object()
    out = redact({"obj": marker, "n": 3, "f": 0.5, "b": True, "none": None}, env_secrets=[])
    assert out["obj"] is marker and out == {"obj": marker, "n": 3, "f": 0.5, "b": True, "none": None}


def test_shell_working_directory_is_not_a_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    """PWD/OLDPWD name a "pwd", but hold the working directory: masking them would redact every path."""
    monkeypatch.setenv("PWD", "/home/someone/project")
    monkeypatch.setenv("OLDPWD", "/home/someone/elsewhere")
    values = secret_env_values()
    assert "/home/someone/project" not in values and "/home/someone/elsewhere" not in values
    config = {"logging_dir": "/home/someone/project/runs", "db_pwd": "hunter22"}
    assert redact(config) == {"logging_dir": "/home/someone/project/runs", "db_pwd": REDACTED}
    # a tracker that declares such a variable secret still gets it masked
    assert "/home/someone/project" in secret_env_values({"PWD"})


def test_special_token_values_are_not_treated_as_secrets() -> None:
    from tracklink.redact import redact

    config = {"image_token": "<image>", "boi_token": "<start_of_image>", "cls_token": "[CLS]",
              "hub_token": "hf_abcdefghijklmnop", "eos_token": "<|endoftext|>"}
    out = redact(config, [])
    assert out["image_token"] == "<image>" and out["boi_token"] == "<start_of_image>"
    assert out["cls_token"] == "[CLS]" and out["eos_token"] == "<|endoftext|>"
    assert out["hub_token"] == "<redacted>"


# -- files a tracker uploads ---------------------------------------------------------------------------

UPLOAD_SECRET = "env-upload-SECRET-0451"


def _checkpoint(root: Path) -> Path:
    """A checkpoint-like directory: a config with a secret-named key, a text file with a URL password and
    an environment secret, a clean JSON state, binary weights, and a clean nested file."""
    folder = root / "checkpoint-10"
    (folder / "nested").mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"a": 0.5, "service_password": "pw-123456", "eos_token": "</s>"}))
    (folder / "README.md").write_text(f"db: postgresql://u:hunter22@db/x\nkey: {UPLOAD_SECRET}\n")
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": 10, "best_metric": None}))
    (folder / "model.safetensors").write_bytes(b"\x00\x01" + UPLOAD_SECRET.encode() + b"\x00" * 64)
    (folder / "nested" / "notes.txt").write_text("nothing to hide\n")
    return folder


def test_redacted_file_text_masks_json_keys_urls_and_env_values(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UPLOAD_TEST_API_KEY", UPLOAD_SECRET)
    folder = _checkpoint(tmp_path)
    config = json.loads(redacted_file_text(folder / "config.json"))
    assert config == {"a": 0.5, "service_password": REDACTED, "eos_token": "</s>"}
    readme = redacted_file_text(folder / "README.md")
    assert readme == f"db: postgresql://{REDACTED}@db/x\nkey: {REDACTED}\n"
    assert redacted_file_text(folder / "trainer_state.json") is None  # nothing to mask
    assert redacted_file_text(folder / "model.safetensors") is None  # binary: left as it is
    assert redacted_file_text(tmp_path / "missing.json") is None
    # explicit secrets replace the environment's
    assert redacted_file_text(folder / "README.md", env_secrets=[]) == f"db: postgresql://{REDACTED}@db/x\n" \
        f"key: {UPLOAD_SECRET}\n"


def test_redacted_file_text_masks_token_only_urls(tmp_path: Path) -> None:
    notes = tmp_path / "README.md"
    notes.write_text("source: https://ghp_abc123@github.com/org/x.git\nmirror: ssh://git@github.com/org/x.git\n")
    assert redacted_file_text(notes, env_secrets=[]) == (
        f"source: https://{REDACTED}@github.com/org/x.git\nmirror: ssh://git@github.com/org/x.git\n"
    )


def test_redacted_file_text_skips_large_and_non_utf8_files(tmp_path: Path) -> None:
    big = tmp_path / "big.txt"
    with open(big, "w") as handle:
        handle.write("https://u:hunter22@h\n")
        handle.truncate(MAX_REDACTED_FILE_BYTES + 1)
    assert redacted_file_text(big, env_secrets=[]) is None
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\xe9 https://u:hunter22@h".encode("latin-1"))
    assert redacted_file_text(latin, env_secrets=[]) is None


def test_redacted_upload_yields_the_path_itself_when_nothing_is_masked(tmp_path: Path) -> None:
    folder = tmp_path / "clean"
    folder.mkdir()
    (folder / "config.json").write_text('{"a": 1}')
    with redacted_upload(folder, env_secrets=[]) as upload:
        assert upload == folder
    with redacted_upload(folder / "config.json", env_secrets=[]) as upload:
        assert upload == folder / "config.json"


def test_redacted_upload_of_a_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UPLOAD_TEST_API_KEY", UPLOAD_SECRET)
    folder = _checkpoint(tmp_path)
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    with redacted_upload(folder) as upload:
        assert upload != folder and upload.name == folder.name
        files = {p.relative_to(upload).as_posix(): p.read_bytes() for p in upload.rglob("*") if p.is_file()}
        assert set(files) == {p.relative_to(folder).as_posix() for p in before}
        assert json.loads(files["config.json"])["service_password"] == REDACTED
        assert b"hunter22" not in files["README.md"] and UPLOAD_SECRET.encode() not in files["README.md"]
        # unchanged files keep their bytes (binary files are never rewritten)
        for name in ("trainer_state.json", "model.safetensors", "nested/notes.txt"):
            assert files[name] == (folder / name).read_bytes()
    assert not upload.exists()  # the temporary copy is removed
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before  # originals untouched


def test_redacted_upload_of_a_single_file(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"hub_token": "hf_abcdefghij", "lr": 0.1}))
    with redacted_upload(config, env_secrets=[]) as upload:
        assert upload.name == "config.json" and upload != config
        assert json.loads(upload.read_text()) == {"hub_token": REDACTED, "lr": 0.1}
    assert not upload.exists() and json.loads(config.read_text())["hub_token"] == "hf_abcdefghij"


def test_redacted_upload_cleans_up_when_the_upload_fails(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"api_key": "k-123456789"}))
    with pytest.raises(ConnectionError), redacted_upload(config, env_secrets=[]) as upload:
        raise ConnectionError("backend down")
    assert not upload.exists()
