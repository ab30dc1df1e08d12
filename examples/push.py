"""Upload a trained model to the Hugging Face Hub: weights, config, processor, code and a filled model card.
A GLIED captioner or an HM-LSTM retrieval model: the `model_type` of the folder's config.json says which.

    python examples/push.py --model-dir outputs/quickstart/glied/best --repo-id user/glied-quickstart
    python examples/push.py --model-dir outputs/quickstart/hmlstm/best --repo-id user/hmlstm-quickstart
    python examples/push.py --model-dir ... --repo-id user/name --revision experiments --private \
        --commit-message "GLIED after SCST" [--run-dir outputs/quickstart/glied] [--license apache-2.0]

Everything goes up in ONE commit, so every revision of the repository holds a model and the processor and card
that belong to it: `model.safetensors`, `config.json`, the code that `trust_remote_code=True` loads where glied is
not installed (GLIED: `configuration_glied.py` and `modeling_glied.py`, with `generation_config.json`; HM-LSTM:
`modeling_hmlstm.py`, config and model in one file; both with the `config_checks.py` their configs import),
`processor_config.json` (HM-LSTM: with its phrase parser),
the tokenizer files, and `README.md` (the card of `processing/model_card.py`, with the results of the training run
found next to the model folder). The model and processor are loaded and saved again (`save_pretrained`), which
checks that they load and agree; an HM-LSTM processor saved with spaCy's parser needs spaCy here to load.

The token comes from `--token`, `HF_TOKEN` or `hf auth login`; `HF_ENDPOINT` selects another Hub. Prints the
commit URL; a branch given with `--revision` is created from `main` when it does not exist.
"""
import argparse
import sys
import tempfile
from pathlib import Path

try:
    import modeling_glied  # noqa: F401
except ImportError:  # run from a source checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from huggingface_hub import HfApi

from modeling_glied import GLIEDForCaptioning, HMLSTMModel
from processing import GLIEDProcessor, HMLSTMProcessor
from processing.model_card import build_model_card, read_model_config

# config.json's model_type -> (model class, processor class, name in the default commit message)
MODEL_CLASSES = {
    "glied": (GLIEDForCaptioning, GLIEDProcessor, "GLIED model"),
    "hmlstm": (HMLSTMModel, HMLSTMProcessor, "HM-LSTM model"),
}


def model_classes(model_dir):
    """`(model class, processor class, name)` of a saved model folder, by the model_type of its config.json;
    FileNotFoundError or ValueError for a folder that holds neither a GLIED nor an HM-LSTM model."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"model folder not found: {model_dir}")
    return MODEL_CLASSES[read_model_config(model_dir)["model_type"]]


def stage_model_folder(model_dir, target, repo_id=None, run_dir=None, license=None):
    """Write everything the repository receives into `target` (a GLIED or an HM-LSTM folder, by its config.json);
    returns the model card."""
    model_class, processor_class, _ = model_classes(model_dir)
    card = build_model_card(model_dir, run_dir=run_dir, repo_id=repo_id, license=license)  # checks the files
    processor = processor_class.from_pretrained(model_dir)
    model = model_class.from_pretrained(model_dir)
    processor.check_model_config(model.config)
    model.save_pretrained(target)
    processor.save_pretrained(target)
    card.save(Path(target) / "README.md")
    return card


def push(model_dir, repo_id, revision=None, private=False, commit_message=None, run_dir=None, license=None,
         token=None):
    """Create the repository (and branch) if needed and upload the model folder in one commit; returns its
    `CommitInfo` (`.oid` is the commit id, `.commit_url` its page)."""
    name = model_classes(model_dir)[2]  # before anything is created on the Hub
    api = HfApi(token=token)
    repo_url = api.create_repo(repo_id, private=private, exist_ok=True)
    repo_id = repo_url.repo_id
    if revision not in (None, "main"):
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="glied-push-") as staging:
        stage_model_folder(model_dir, staging, repo_id=repo_id, run_dir=run_dir, license=license)
        return api.upload_folder(repo_id=repo_id, folder_path=staging, revision=revision,
                                 commit_message=commit_message or f"Upload {name} from {Path(model_dir).name}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", required=True,
                        help="a folder with the model and processor (e.g. <run>/best): GLIED or HM-LSTM")
    parser.add_argument("--repo-id", required=True, help="user/name (or name, under the token's user)")
    parser.add_argument("--revision", help="branch to commit to (created from main if missing); default main")
    parser.add_argument("--private", action="store_true", help="create the repository private")
    parser.add_argument("--commit-message", help="the commit title")
    parser.add_argument("--run-dir", help="the training run (config.yaml.json, summary.json, test_metrics.json); "
                                          "default: the model folder or its parent, where they are")
    parser.add_argument("--license", help="license of the weights for the card's metadata, e.g. apache-2.0")
    parser.add_argument("--token", help="Hub token (default: HF_TOKEN or the stored login)")
    args = parser.parse_args(argv)
    commit = push(args.model_dir, args.repo_id, revision=args.revision, private=args.private,
                  commit_message=args.commit_message, run_dir=args.run_dir, license=args.license, token=args.token)
    print(f"pushed {args.model_dir} to {args.repo_id}@{args.revision or 'main'}: {commit.commit_url}")
    return commit


if __name__ == "__main__":
    main()
