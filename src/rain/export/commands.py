"""`rain export` (a checkpoint -> a transformers folder with a model card) and `rain publish` (upload it)."""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

from rain.errors import RainError

DTYPES = ("float32", "bfloat16", "float16")
EXPORT_FILES = ("config.json", "model.safetensors", "tokenizer.json")


def cmd_export(args) -> None:
    import torch

    from rain import checkpoint as ckpt
    from rain.export.card import model_card
    from rain.export.hf import check_target, export_hf

    out = Path(args.out)
    check_apart(out, Path(args.checkpoint))
    check_target(out, args.overwrite)  # before the model loads; export_hf checks again before it replaces anything
    checkpoint = ckpt.find(args.checkpoint)
    check_apart(out, checkpoint.folder)
    folder, template = checkpoint.folder, checkpoint.chat_template
    model, cfg = ckpt.load_model(checkpoint, "cpu")
    tokenizer = ckpt.tokenizer(checkpoint)
    dtype = getattr(torch, args.dtype)
    card = model_card(checkpoint, model.num_params(), model.num_params(non_embedding=True), tokenizer,
                      out.name)
    state = {k: v.to(dtype) for k, v in model.state_dict().items()}
    export_hf(cfg.model, state, tokenizer, out, chat_template=template, card=card, overwrite=args.overwrite)
    kind = "chat model (with its chat template)" if template else "base model"
    print(f"exported {folder} as a {kind}, {model.num_params():,} parameters in {args.dtype}, to {out}/ "
          f"(README.md is its model card; upload with `rain publish {out} --repo NAME`)")
    if tokenizer.pretokenize == "korean-morphemes":
        print("note: its tokenizer was trained on Korean morphemes, which transformers cannot split: users call "
              "tokenizer(rain.data.morphemes.split_morphemes(text), is_split_into_words=True) (the card shows how)")


def check_apart(out: Path, source: Path) -> None:
    """The export folder is neither the source (a run or checkpoint folder) nor inside it nor around it: replacing
    it would delete the source, and writing into it would mix an export into a run."""
    out_path, source_path = out.resolve(), source.resolve()
    if out_path == source_path:
        raise RainError(f"export target {out} is the source {source} itself: choose another folder")
    if source_path in out_path.parents:
        raise RainError(f"export target {out} lies inside the source {source}: choose a folder outside it")
    if out_path in source_path.parents:
        raise RainError(f"export target {out} contains the source {source}: choose a folder outside it")


def export_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise RainError(f"{folder}: no such folder; create it with `rain export CHECKPOINT {folder} --format hf`")
    if (folder / "state.json").is_file():  # a rain checkpoint has every export file name too
        raise RainError(f"{folder} is a rain checkpoint, not an export: its training state (state.json, with this "
                        f"machine's paths, and the optimizer) is not for publishing; run `rain export {folder} OUT` "
                        "and publish OUT")
    missing = [f for f in EXPORT_FILES if not (folder / f).is_file()]
    if missing:
        raise RainError(f"{folder} is not an export (missing {', '.join(missing)}); "
                        f"create one with `rain export CHECKPOINT {folder} --format hf`")
    return sorted(p for p in folder.rglob("*") if p.is_file() and not any(
        part.startswith(".") for part in p.relative_to(folder).parts))


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024


def cmd_publish(args) -> None:
    folder = Path(args.folder)
    files = export_files(folder)
    if not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", args.repo):
        raise RainError(f"--repo {args.repo!r}: expected NAME or OWNER/NAME (letters, digits, '-', '_', '.')")
    visibility = "private" if args.private else "public"
    if args.dry_run:
        total = sum(p.stat().st_size for p in files)
        print(f"dry run: would upload {len(files)} files ({_size(total)}) to the {visibility} model repo {args.repo}:")
        for p in files:
            print(f"  {p.relative_to(folder)}  {_size(p.stat().st_size)}")
        return
    try:
        import huggingface_hub
        from huggingface_hub import constants
    except ImportError:
        raise RainError("publishing needs huggingface_hub: pip install 'rain[hf]'") from None
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on") or constants.HF_HUB_OFFLINE:
        raise RainError("HF_HUB_OFFLINE is set, so the Hugging Face Hub cannot be reached: unset it to publish "
                        "(--dry-run lists what would be sent)")
    token = os.environ.get("HF_TOKEN") or huggingface_hub.get_token()
    if not token:
        raise RainError("no Hugging Face token: set HF_TOKEN or run `hf auth login` (a token with write access)")
    api = huggingface_hub.HfApi(token=token)
    try:
        url = api.create_repo(args.repo, private=args.private, exist_ok=True, repo_type="model")
        api.upload_folder(folder_path=str(folder), repo_id=url.repo_id, repo_type="model",
                          commit_message=args.message, ignore_patterns=[".*", "**/.*"])
    except Exception as exc:  # network and Hub errors of every kind end here as one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RainError(f"could not publish to {args.repo}: {first}") from None
    print(f"published {len(files)} files to {url}")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="write a checkpoint as a Hugging Face transformers folder", description=
                       "Export a checkpoint (or a run's last one) as a Qwen3, Qwen3-MoE or Llama folder that "
                       "transformers loads with no custom code and the same logits, with the tokenizer, the chat template of SFT models and "
                       "a README.md model card written from the run's records.")
    p.add_argument("checkpoint", help="a checkpoint folder or a run folder")
    p.add_argument("out", help="the folder to write")
    p.add_argument("--format", default="hf", choices=("hf",), help="output format (default: %(default)s)")
    p.add_argument("--dtype", default="float32", choices=DTYPES, help="weight dtype (default: %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier export at OUT (never a run, a "
                   "checkpoint or a folder holding other files)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("publish", help="upload an exported folder to the Hugging Face Hub", description=
                       "Create (or reuse) a model repo and upload the folder. The token comes from HF_TOKEN or "
                       "`hf auth login`.")
    p.add_argument("folder", help="a folder written by `rain export`")
    p.add_argument("--repo", required=True, help="NAME or OWNER/NAME of the model repo")
    p.add_argument("--private", action="store_true", help="create the repo as private")
    p.add_argument("--dry-run", action="store_true", help="list what would be uploaded and stop")
    p.add_argument("--message", default="Upload model exported with rain", help="the commit message")
    p.set_defaults(func=cmd_publish)
