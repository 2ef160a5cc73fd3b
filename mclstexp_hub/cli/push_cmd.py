"""`mclstexp push DIR REPO_ID`: publish a checkpoint directory, the model card last."""

from __future__ import annotations

import argparse

from ._options import add_command


def _push(args: argparse.Namespace) -> int:
    from mclstexp_hub.hub.push import push_checkpoint

    result = push_checkpoint(
        args.checkpoint_dir,
        args.repo_id,
        card=args.card,
        revision=args.revision,
        private=True if args.private else None,
        token=args.token,
        commit_message=args.commit_message,
        add_missing=not args.no_add_missing,
    )
    print(f"pushed {args.checkpoint_dir} to {result.url} (branch {result.revision})")
    print(f"  files commit {result.files_commit}: {len(result.uploaded)} files")
    for name in result.uploaded:
        print(f"    {name}")
    if result.added:
        print(f"  derived by push (not in the directory): {', '.join(result.added)}")
    print(f"  card commit  {result.card_commit}: README.md")
    if not result.has_spot_bank:
        print("  note: no spot bank; the published model embeds images but cannot predict "
              "expression until one is attached")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    push = add_command(
        subparsers, "push",
        "upload a checkpoint (weights, spot bank, processor, code) then its model card", """
        Uploads everything a checkpoint directory holds (minus training leftovers) in
        one commit and the model card in a second, last commit. Missing image-processor
        config and pipeline/remote code are derived from the installed package unless
        --no-add-missing. The Hub is HF_ENDPOINT (default huggingface.co); the token is
        --token, HF_TOKEN or the stored login.""")
    push.add_argument("checkpoint_dir", help="directory written by save_pretrained / mclstexp train")
    push.add_argument("repo_id", help="ORG/NAME of the model repository (created if absent)")
    push.add_argument("--card", default=None,
                      help="model card to upload (default: DIR/README.md, else one generated "
                      "from the config with model_cards/template.md; see `mclstexp card`)")
    push.add_argument("--revision", default=None, help="branch to push to (created if absent)")
    push.add_argument("--private", action="store_true", help="create the repository private")
    push.add_argument("--token", default=None, help="Hub token (default: HF_TOKEN / stored login)")
    push.add_argument("--commit-message", default=None)
    push.add_argument("--no-add-missing", action="store_true",
                      help="refuse instead of deriving missing processor/pipeline/remote code")
    push.set_defaults(func=_push)
