"""The LocalHub test server, exercised with the real clients (huggingface_hub, transformers)."""

import json
import os
import re
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor

import pytest
import huggingface_hub
from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from hub_server import git_blob_oid, local_hub, serve_local_hub  # noqa: F401  (the fixture also comes from conftest.py)


COMMIT_ID = re.compile(r"[0-9a-f]{40}")


def _read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def test_create_upload_list_download(local_hub, tmp_path):
    assert huggingface_hub.constants.ENDPOINT == local_hub.endpoint
    repo_url = huggingface_hub.create_repo("user/demo")
    assert repo_url.repo_id == "user/demo" and repo_url.endpoint == local_hub.endpoint
    with pytest.raises(HfHubHTTPError) as conflict:
        huggingface_hub.create_repo("user/demo")
    assert conflict.value.response.status_code == 409
    assert huggingface_hub.create_repo("user/demo", exist_ok=True).repo_id == "user/demo"
    assert huggingface_hub.create_repo("no-namespace").repo_id == "user/no-namespace"  # the token's user
    assert huggingface_hub.whoami()["name"] == "user"

    folder = tmp_path / "folder"
    (folder / "sub").mkdir(parents=True)
    (folder / "config.json").write_text('{"answer": 42}')
    (folder / "sub" / "notes.txt").write_text("hello hub")
    commit = huggingface_hub.upload_folder(repo_id="user/demo", folder_path=folder, commit_message="add files")
    assert COMMIT_ID.fullmatch(commit.oid)
    assert commit.commit_url == f"{local_hub.endpoint}/user/demo/commit/{commit.oid}"

    assert huggingface_hub.list_repo_files("user/demo") == [".gitattributes", "config.json", "sub/notes.txt"]
    info = huggingface_hub.model_info("user/demo", files_metadata=True)
    assert info.sha == commit.oid
    assert {s.rfilename: s.size for s in info.siblings}["sub/notes.txt"] == len("hello hub")
    tree = list(HfApi().list_repo_tree("user/demo", expand=True))
    assert [(e.path, type(e).__name__) for e in tree] == [
        ("sub", "RepoFolder"), (".gitattributes", "RepoFile"), ("config.json", "RepoFile")
    ]
    assert tree[-1].last_commit.oid == commit.oid and tree[-1].last_commit.title == "add files"

    path = huggingface_hub.hf_hub_download("user/demo", "sub/notes.txt")
    assert _read(path) == "hello hub"
    assert os.path.commonpath([path, str(local_hub.cache_dir)]) == str(local_hub.cache_dir)  # fresh cache per test
    meta = huggingface_hub.get_hf_file_metadata(huggingface_hub.hf_hub_url("user/demo", "sub/notes.txt"))
    assert (meta.commit_hash, meta.etag, meta.size) == (commit.oid, git_blob_oid(b"hello hub"), 9)

    snapshot = huggingface_hub.snapshot_download("user/demo")
    assert json.loads(_read(os.path.join(snapshot, "config.json"))) == {"answer": 42}
    assert _read(os.path.join(snapshot, "sub", "notes.txt")) == "hello hub"
    local_hub.assert_clean()


def test_download_in_a_fresh_subprocess(local_hub):
    huggingface_hub.create_repo("user/sub")
    commit = huggingface_hub.upload_file(
        path_or_fileobj=b"from the subprocess", path_in_repo="a.txt", repo_id="user/sub"
    )
    assert "HF_HUB_OFFLINE" not in local_hub.env and local_hub.env["HF_ENDPOINT"] == local_hub.endpoint
    script = textwrap.dedent(
        """
        import json
        from huggingface_hub import constants, hf_hub_download
        path = hf_hub_download("user/sub", "a.txt")
        print(json.dumps({"endpoint": constants.ENDPOINT, "path": path, "content": open(path).read()}))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], env=local_hub.env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["endpoint"] == local_hub.endpoint and result["content"] == "from the subprocess"
    assert f"snapshots/{commit.oid}/a.txt" in result["path"]
    assert ("GET", "/user/sub/resolve/main/a.txt", 200) in local_hub.requests
    local_hub.assert_clean()


def test_revisions_branches_and_history(local_hub, tmp_path):
    api = HfApi()
    api.create_repo("user/rev")
    first = api.upload_file(path_or_fileobj=b"v1", path_in_repo="weights.txt", repo_id="user/rev")
    second = api.upload_file(path_or_fileobj=b"v2", path_in_repo="weights.txt", repo_id="user/rev")
    assert first.oid != second.oid

    def content(revision=None, **kwargs):
        return _read(api.hf_hub_download("user/rev", "weights.txt", revision=revision, **kwargs))

    assert content() == "v2" and content(first.oid) == "v1" and content(second.oid) == "v2"
    assert content(first.oid, cache_dir=tmp_path / "other-cache") == "v1"  # served, not only cached

    # Unchanged content: the client sees the remote oid in the preupload answer and makes no commit.
    same = api.upload_file(path_or_fileobj=b"v2", path_in_repo="weights.txt", repo_id="user/rev")
    assert same.oid == second.oid

    # Branches.
    api.create_branch("user/rev", branch="old", revision=first.oid)
    with pytest.raises(HfHubHTTPError) as conflict:
        api.create_branch("user/rev", branch="old")
    assert conflict.value.response.status_code == 409
    api.create_branch("user/rev", branch="old", exist_ok=True)
    assert content("old") == "v1"
    api.create_tag("user/rev", tag="v1.0", revision=first.oid)
    assert content("v1.0") == "v1" and content(first.oid[:12]) == "v1"  # tags and short commit ids resolve too
    on_branch = api.create_commit(
        "user/rev", [CommitOperationAdd("weights.txt", b"v1.1")], commit_message="fix", revision="old",
        parent_commit=first.oid,
    )
    assert content("old") == "v1.1" and content() == "v2"
    with pytest.raises(HfHubHTTPError) as stale:
        api.create_commit("user/rev", [CommitOperationAdd("x.txt", b"x")], commit_message="stale", revision="old",
                          parent_commit=first.oid)
    assert stale.value.response.status_code == 412
    refs = api.list_repo_refs("user/rev")
    assert {b.name: b.target_commit for b in refs.branches} == {"main": second.oid, "old": on_branch.oid}

    # Deletions keep older revisions intact; history is first-parent, newest first.
    deleted = api.create_commit("user/rev", [CommitOperationDelete("weights.txt")], commit_message="rm")
    assert api.list_repo_files("user/rev") == [".gitattributes"]
    assert "weights.txt" in api.list_repo_files("user/rev", revision=second.oid)
    history = [c.commit_id for c in api.list_repo_commits("user/rev")]
    assert history[:3] == [deleted.oid, second.oid, first.oid] and len(history) == 4
    snapshot = api.snapshot_download("user/rev", revision=first.oid, cache_dir=tmp_path / "snap")
    assert _read(os.path.join(snapshot, "weights.txt")) == "v1"

    # Pull requests.
    pr = api.create_commit("user/rev", [CommitOperationAdd("weights.txt", b"pr")], commit_message="pr",
                           create_pr=True)
    assert pr.pr_revision == "refs/pr/1" and content("refs/pr/1") == "pr"
    assert api.list_repo_files("user/rev") == [".gitattributes"]

    # Dataset repos live under /datasets/.
    api.create_repo("user/data", repo_type="dataset")
    api.upload_file(path_or_fileobj=b"a,b\n", path_in_repo="data.csv", repo_id="user/data", repo_type="dataset")
    assert _read(api.hf_hub_download("user/data", "data.csv", repo_type="dataset")) == "a,b\n"
    assert api.dataset_info("user/data").siblings[-1].rfilename == "data.csv"
    local_hub.assert_clean()


def test_errors_map_to_client_exceptions(local_hub):
    api = HfApi()
    api.create_repo("user/err")
    api.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id="user/err")

    with pytest.raises(RepositoryNotFoundError):
        api.hf_hub_download("user/missing", "x.txt")
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("user/missing")
    with pytest.raises(RepositoryNotFoundError):
        api.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id="user/missing")
    assert not api.repo_exists("user/missing") and api.repo_exists("user/err")

    with pytest.raises(EntryNotFoundError):
        api.hf_hub_download("user/err", "missing.txt")
    assert not api.file_exists("user/err", "missing.txt") and api.file_exists("user/err", "x.txt")

    with pytest.raises(RevisionNotFoundError):
        api.hf_hub_download("user/err", "x.txt", revision="no-such-branch")
    with pytest.raises(RevisionNotFoundError):
        api.hf_hub_download("user/err", "x.txt", revision="0" * 40)
    with pytest.raises(RevisionNotFoundError):
        api.model_info("user/err", revision="no-such-branch")
    with pytest.raises(RevisionNotFoundError):
        api.create_branch("user/err", branch="b", revision="no-such-branch")
    local_hub.assert_clean()


def test_transformers_push_to_hub_and_from_pretrained(local_hub, tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")

    torch.manual_seed(0)
    config = transformers.BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=37, vocab_size=99)
    model = transformers.BertModel(config).eval()
    first = model.push_to_hub("user/tiny")
    files = huggingface_hub.list_repo_files("user/tiny")
    assert "model.safetensors" in files and "config.json" in files and "pytorch_model.bin" not in files

    def same_weights(a, b):
        sa, sb = a.state_dict(), b.state_dict()
        return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)

    loaded = transformers.BertModel.from_pretrained("user/tiny")
    assert same_weights(model, loaded)
    old_weights = {k: v.clone() for k, v in model.state_dict().items()}

    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(1.0)
    second = model.push_to_hub("user/tiny", commit_message="second")
    assert second.oid != first.oid
    assert same_weights(model, transformers.BertModel.from_pretrained("user/tiny"))
    old = transformers.BertModel.from_pretrained("user/tiny", revision=first.oid, cache_dir=tmp_path / "fresh")
    assert all(torch.equal(old.state_dict()[k], v) for k, v in old_weights.items())

    # A tokenizer next to the model, a branch push, and a pipeline loading everything by repo id.
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(94)]) + "\n")
    transformers.BertTokenizer(str(vocab)).push_to_hub("user/tiny")
    transformers.BertConfig(**{**config.to_dict(), "hidden_dropout_prob": 0.5}).push_to_hub("user/tiny", revision="dev")
    assert transformers.BertConfig.from_pretrained("user/tiny", revision="dev").hidden_dropout_prob == 0.5
    assert transformers.BertConfig.from_pretrained("user/tiny").hidden_dropout_prob == 0.1
    extractor = transformers.pipeline("feature-extraction", model="user/tiny")
    assert torch.tensor(extractor("w1 w2 w3")).shape == (1, 5, 32)
    # Without a task, pipeline() asks the Hub (model_info) for the README's pipeline_tag.
    card = "---\nlibrary_name: transformers\npipeline_tag: feature-extraction\ntags:\n- tiny\n---\n# tiny\n"
    huggingface_hub.upload_file(path_or_fileobj=card.encode(), path_in_repo="README.md", repo_id="user/tiny")
    info = huggingface_hub.model_info("user/tiny")
    assert info.pipeline_tag == "feature-extraction" and info.library_name == "transformers"
    assert info.config["model_type"] == "bert" and "tiny" in info.tags
    assert torch.tensor(transformers.pipeline(model="user/tiny")("w1")).shape == (1, 3, 32)
    local_hub.assert_clean()


def test_concurrent_commits_are_serialised(local_hub):
    api = HfApi()
    api.create_repo("user/busy")

    def push(i):
        return api.upload_file(path_or_fileobj=f"file {i}".encode(), path_in_repo=f"f{i}.txt", repo_id="user/busy").oid

    with ThreadPoolExecutor(8) as pool:
        oids = list(pool.map(push, range(16)))
    assert len(set(oids)) == 16
    assert sorted(api.list_repo_files("user/busy")) == sorted([".gitattributes"] + [f"f{i}.txt" for i in range(16)])
    assert len(api.list_repo_commits("user/busy")) == 17
    local_hub.assert_clean()


def test_context_manager_restores_the_process(tmp_path):
    import httpx2

    before_endpoint, before_env = huggingface_hub.constants.ENDPOINT, dict(os.environ)
    with serve_local_hub(tmp_path / "home") as hub:
        assert huggingface_hub.constants.ENDPOINT == hub.endpoint == os.environ["HF_ENDPOINT"]
        assert huggingface_hub.constants.HF_HUB_CACHE == str(tmp_path / "home" / "hub") == str(hub.cache_dir)
        assert huggingface_hub.hf_api.api.endpoint == hub.endpoint
        huggingface_hub.create_repo("user/x")
        endpoint = hub.endpoint
    assert huggingface_hub.constants.ENDPOINT == before_endpoint and dict(os.environ) == before_env
    assert huggingface_hub.hf_api.api.endpoint == before_endpoint
    with pytest.raises(httpx2.ConnectError):
        httpx2.get(f"{endpoint}/api/models/user/x", timeout=5)
