"""Every command's options: dataclasses of commented defaults, checked as a whole before any work.

`chatbot.flags` builds one flag per field (`--batch-size` for `batch_size`) with the field's help
text, so this file (with `chatbot.options` for sampling) is the single place a default lives.
No torch here: `--help` answers at once.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from chatbot.data.corpus import FORMATS
from chatbot.flags import opt, port_number, positive_int
from chatbot.layout import LOSS_ON, MAX_HISTORY, SPEAKER_TOKENS
from chatbot.model.lora import INSTALL_HINT as LORA_INSTALL_HINT
from chatbot.model.lora import LoraSettings
from chatbot.options import DTYPES
from chatbot.resources import SAMPLE_TRAIN, SAMPLE_VALID, VOCAB

# Host header names chatbot-serve always answers to: this machine's own.
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")
REPORT_TO = {"none": None, "tensorboard": "tensorboard", "wandb": "wandb"}  # choice -> package it needs
# With --train alone, hold out this share for validation, for best/ and early stopping, as GPT2-chitchat
# does. Below HOLDOUT_MIN_EXAMPLES the held-out few would be too noisy to pick a best model by and be
# missed from training; HOLDOUT_MAX_EXAMPLES already measures perplexity closely on a large corpus.
HOLDOUT_SHARE, HOLDOUT_MIN_EXAMPLES, HOLDOUT_MAX_EXAMPLES = 0.05, 200, 1000


@dataclass(frozen=True)
class TrainConfig:
    # data
    train: str = opt(str(SAMPLE_TRAIN),
                     "training corpus (txt, LCCC json, jsonl, text) or a chatbot-preprocess folder "
                     "(default: the bundled sample of 438 dialogues)",
                     aliases=("--train-path", "--train-raw-path"))
    valid: str | None = opt(None, "validation corpus or folder (default: the bundled sample's validation "
                                  "dialogues when training on the bundled sample, else none)")
    valid_ratio: float | None = opt(None, "hold out this share of the training examples for validation "
                                         "instead of --valid (default: with --train alone, 5%% of at least "
                                         "200 examples, at most 1,000; 0: none)")
    format: str = opt("auto", "corpus format", choices=FORMATS)
    split: str | None = opt(None, "LCCC split to read (train, valid, test)", metavar="NAME")
    skip_bad: bool = opt(False, "skip unreadable corpus records instead of stopping")
    max_len: int | None = opt(None, "tokens per training example "
                                    "(default: min(256, the model's n_positions))")
    loss_on: str = opt("all", "tokens that carry loss: all, replies (every turn but the first), "
                              "last (final turn)", choices=LOSS_ON)
    speaker_ids: bool = opt(False, f"add {'/'.join(SPEAKER_TOKENS)} token_type_ids alternating by turn")
    reverse: bool = opt(False, "train on dialogues with the turn order reversed (a backward model for MMI)",
                        aliases=("--train-mmi",))
    # model
    config: str = opt("tiny", "model trained from scratch: a bundled config (tiny, small, base) or a "
                              "GPT2Config JSON path", metavar="NAME|PATH",
                     aliases=("--model-config",))
    pretrained: str | None = opt(None, "fine-tune this model folder or Hugging Face Hub id: GPT-2 "
                                       "(uer/gpt2-chinese-*) or CDial-GPT (thu-coai/CDial-GPT_LCCC-*), in "
                                       "its own layout; its tokenizer is used",
                                aliases=("--pretrained-model",))
    vocab: str = opt(str(VOCAB), "vocab.txt for a model trained from scratch "
                                 "(default: the bundled vocabulary)", aliases=("--vocab-path",))
    resize_embeddings: bool = opt(False, "grow a pretrained model's embedding to its tokenizer's size")
    freeze: str | None = opt(None, "keep weights fixed: 'embeddings', or 'layers:N' "
                                   "(embeddings and the first N blocks)", metavar="WHAT")
    lora_r: int | None = opt(None, "train LoRA adapters of rank R on a frozen model instead of all its "
                                   "weights (needs pip install 'chatbot-zh[lora]'); final/ and best/ hold "
                                   "the merged model and the adapter alone in adapter/", metavar="R")
    lora_alpha: float | None = opt(None, "with --lora-r: scale of the LoRA update, alpha / R (default: 2 R)",
                                   metavar="A")
    lora_dropout: float | None = opt(None, "with --lora-r: dropout on the adapters' input (default: 0.05)",
                                     metavar="P")
    lora_targets: str | None = opt(None, "with --lora-r: the layers of each block to adapt, comma-separated: "
                                         "c_attn (attention q/k/v), c_proj (attention and MLP outputs), c_fc "
                                         "(MLP input) (default: c_attn)", metavar="NAMES")
    # optimisation
    epochs: int = opt(40, "passes over the training data (fewer with early stopping: see --patience)")
    max_steps: int = opt(0, "stop after this many optimizer steps (0: run all epochs)")
    batch_size: int = opt(16, "examples per device per micro-batch")
    grad_accum: int = opt(1, "micro-batches per optimizer step",
                          aliases=("--gradient-accumulation-steps", "--gradient-accumulation"))
    lr: float = opt(5e-4, "peak learning rate (fine-tuning a pretrained model: try 1e-4 or lower)")
    weight_decay: float = opt(0.01, "AdamW weight decay (not applied to biases and LayerNorm)")
    warmup_steps: int | None = opt(None, "linear warmup steps (overrides --warmup-ratio)")
    warmup_ratio: float = opt(0.05, "share of all steps spent warming up")
    scheduler: str = opt("cosine", "decay after warmup", choices=("cosine", "linear", "constant"))
    max_grad_norm: float = opt(1.0, "clip the gradient norm to this (0: no clipping)")
    seed: int = opt(42, "random seed (each process adds its rank)")
    # hardware
    device: str = opt("auto", "auto, cpu, cuda or cuda:N (torchrun picks cuda:LOCAL_RANK)", metavar="DEVICE",
                      aliases=("--no-cuda=cpu",))
    precision: str = opt("auto", "auto (GPU: bf16, else fp16; CPU: bf16 where it runs bf16 natively, "
                                 "else fp32), fp32, bf16 or fp16", choices=("auto", "fp32", "bf16", "fp16"))
    compile: bool = opt(False, "torch.compile the model (faster steps after a slow first one)")
    gradient_checkpointing: bool = opt(False, "recompute activations in backward to save memory")
    num_workers: int = opt(0, "DataLoader worker processes")
    # evaluation, checkpoints, logging
    output_dir: str = opt("model", "where checkpoints, best/, final/ and metrics.jsonl go",
                          aliases=("--save-model-path", "--dialogue-model-output-path",
                                   "--mmi-model-output-path"))
    eval_steps: int = opt(0, "also validate every N optimizer steps (0: once per epoch)")
    patience: int = opt(3, "with validation data, stop after N validations without improvement (0: never)")
    save_steps: int = opt(0, "save a checkpoint every N optimizer steps (0: by --save-minutes only)")
    save_minutes: float = opt(10.0, "also save a checkpoint at the first logged step this many minutes after "
                                    "the last one (0: never); one is always saved at the end")
    save_total_limit: int = opt(2, "keep only the newest N checkpoint-* folders (0: keep all)")
    log_steps: int = opt(10, "write metrics every N optimizer steps", aliases=("--log-step",))
    resume: str | None = opt(None, "'auto' (newest readable checkpoint in --output-dir) "
                                   "or a checkpoint folder", metavar="auto|PATH")
    overwrite: bool = opt(False, "start afresh in an --output-dir holding a previous run, deleting that "
                                 "run's checkpoints, best/, final/ and metrics "
                                 "(nothing else in it is touched)")
    eval_generate: int = opt(0, "after training, generate replies for N validation dialogues "
                                "and log BLEU/Distinct")
    report_to: str = opt("none", "also log metrics to TensorBoard (output_dir/runs) or Weights & Biases "
                                 "(metrics.jsonl is always written)", choices=tuple(REPORT_TO))
    quiet: bool = opt(False, "no progress bar or tables")

    # Keys a run records in training_args.json beside its options; a config file may hold them.
    derived_keys: ClassVar[tuple[str, ...]] = ("source", "layout", "valid_ppl", "base_sha256")

    def __post_init__(self):
        checks = [
            ("epochs", self.epochs >= 1, ">= 1"), ("max_steps", self.max_steps >= 0, ">= 0"),
            ("batch_size", self.batch_size >= 1, ">= 1"), ("grad_accum", self.grad_accum >= 1, ">= 1"),
            ("lr", 0 < self.lr < math.inf, "> 0 and finite"),
            ("weight_decay", 0 <= self.weight_decay < math.inf, ">= 0 and finite"),
            ("warmup_steps", self.warmup_steps is None or self.warmup_steps >= 0, ">= 0"),
            ("warmup_ratio", 0 <= self.warmup_ratio < 1, "in [0, 1)"),
            ("valid_ratio", self.valid_ratio is None or 0 <= self.valid_ratio < 1, "in [0, 1)"),
            ("max_grad_norm", 0 <= self.max_grad_norm < math.inf, ">= 0 and finite"),
            ("max_len", self.max_len is None or self.max_len >= 4, ">= 4"),
            ("eval_steps", self.eval_steps >= 0, ">= 0"), ("save_steps", self.save_steps >= 0, ">= 0"),
            ("patience", self.patience >= 0, ">= 0"),
            ("save_minutes", 0 <= self.save_minutes < math.inf, ">= 0 and finite"),
            ("save_total_limit", self.save_total_limit >= 0, ">= 0"),
            ("log_steps", self.log_steps >= 1, ">= 1"), ("num_workers", self.num_workers >= 0, ">= 0"),
            ("eval_generate", self.eval_generate >= 0, ">= 0"),
            ("device", re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device) is not None,
             "auto, cpu, cuda or cuda:N"),
            ("freeze", self.freeze is None or re.fullmatch(r"embeddings|layers:\d+", self.freeze) is not None,
             "'embeddings' or 'layers:N'"),
            ("lora_r", self.lora_r is None or self.lora_r >= 1, ">= 1 (leave it out to train all weights)"),
            ("lora_alpha", self.lora_alpha is None or 0 < self.lora_alpha < math.inf, "> 0 and finite"),
            ("lora_dropout", self.lora_dropout is None or 0 <= self.lora_dropout < 1, "in [0, 1)"),
            ("lora_targets", self.lora_targets is None or re.fullmatch(r"\w+(,\w+)*", self.lora_targets),
             "layer names separated by commas, e.g. c_attn,c_proj"),
        ]
        for name, ok, allowed in checks:
            if not ok:
                raise ValueError(f"--{name.replace('_', '-')} must be {allowed}, got {getattr(self, name)!r}")
        if self.overwrite and self.resume:
            raise ValueError("give either --overwrite (start afresh) or --resume (continue), not both")
        if self.valid and self.valid_ratio:
            raise ValueError("give either --valid or --valid-ratio, not both")
        if self.format == "text" and self.loss_on != "all":
            raise ValueError("--format text has no turns: use --loss-on all")
        self._check_lora()
        package = REPORT_TO[self.report_to]
        if package and importlib.util.find_spec(package) is None:
            extra = ("pip install 'chatbot-zh[tensorboard]'" if package == "tensorboard"
                     else "pip install wandb")
            raise ValueError(f"--report-to {self.report_to} needs the {package} package, which is not "
                             f"installed; {extra}, or use --report-to none")

    def _check_lora(self) -> None:
        if self.lora_r is None:
            given = [n for n in ("lora_alpha", "lora_dropout", "lora_targets")
                     if getattr(self, n) is not None]
            if given:
                flag = "--" + given[0].replace("_", "-")
                raise ValueError(f"{flag} sets up LoRA, which is off without --lora-r R: add --lora-r "
                                 "(e.g. 8), or leave it out to train all weights")
            return
        if self.resize_embeddings:
            raise ValueError("--lora-r trains no embedding, so the rows --resize-embeddings adds would stay "
                             "random: train all weights for that (leave out --lora-r)")
        if importlib.util.find_spec("peft") is None:
            raise ValueError(f"--lora-r needs the peft package, which is not installed; {LORA_INSTALL_HINT}, "
                             "or leave out --lora-r to train all weights")

    def lora_settings(self) -> LoraSettings | None:
        """--lora-* with their defaults, or None without --lora-r."""
        return LoraSettings.of(self.lora_r, self.lora_alpha, self.lora_dropout, self.lora_targets)

    def valid_path(self) -> str | None:
        """--valid; else the bundled validation dialogues when training on the bundled sample
        (and no --valid-ratio)."""
        if self.valid is None and not self.valid_ratio and Path(self.train).resolve() == SAMPLE_TRAIN:
            return str(SAMPLE_VALID)
        return self.valid

    def holdout_ratio(self, n_examples: int) -> float:
        """--valid-ratio; by default, with no validation corpus, `HOLDOUT_SHARE` of `n_examples` training
        examples (at most `HOLDOUT_MAX_EXAMPLES`) when there are `HOLDOUT_MIN_EXAMPLES` or more, else 0."""
        if self.valid_ratio is not None:
            return self.valid_ratio
        if self.valid_path() is not None or n_examples < HOLDOUT_MIN_EXAMPLES:
            return 0.0
        return min(HOLDOUT_SHARE, HOLDOUT_MAX_EXAMPLES / n_examples)

    def resolved_max_len(self, n_positions: int) -> int:
        """--max-len, by default min(256, n_positions).

        Raises:
            ValueError: if --max-len exceeds the model's n_positions.
        """
        max_len = self.max_len or min(256, n_positions)
        if max_len > n_positions:
            raise ValueError(f"--max-len {max_len} exceeds the model's n_positions ({n_positions}); "
                             f"use --max-len {n_positions} or less, or a config with more positions")
        return max_len

    def total_steps(self, steps_per_epoch: int) -> int:
        return self.max_steps or steps_per_epoch * self.epochs

    def warmup(self, total_steps: int) -> int:
        """--warmup-steps, else --warmup-ratio of all steps."""
        return self.warmup_steps if self.warmup_steps is not None else int(self.warmup_ratio * total_steps)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def recorded(self) -> dict:
        """The options saved as training_args.json. Not --resume and --overwrite: they say what this
        invocation did with --output-dir, and a re-run from the file must not repeat them unasked."""
        return {k: v for k, v in self.to_dict().items() if k not in ("resume", "overwrite")}


@dataclass(frozen=True)
class PreprocessConfig:
    corpus: list[str] = opt(help="corpus files (txt, LCCC json, jsonl or plain text)", positional=True,
                            metavar="CORPUS")
    output: str = opt(help="folder to write tokens.bin, offsets.npy, meta.json into", short="-o",
                      metavar="DIR", aliases=("--save-path",))
    format: str = opt("auto", "corpus format; auto picks by extension and first line (text is never guessed)",
                      choices=FORMATS)
    split: str | None = opt(None, "LCCC split to read: train, valid or test (default: train)", metavar="NAME")
    vocab: str = opt(str(VOCAB), "BERT vocab.txt to tokenize with (default: the bundled vocabulary)",
                     metavar="FILE", aliases=("--vocab-path",))
    tokenizer: str | None = opt(None, "a folder with tokenizer files instead of --vocab, or the model "
                                      "folder or Hub id you will fine-tune", metavar="DIR|ID")
    vocab_out: str | None = opt(None, "first build a vocabulary from the corpora (specials + every "
                                      "character seen --min-freq times), write it here and encode with it",
                                metavar="FILE")
    min_freq: int = opt(1, "with --vocab-out: keep characters seen at least this often", parse=positive_int)
    max_len: int = opt(256, "tokens per example; longer dialogues are split at turn boundaries",
                       parse=positive_int)
    workers: int = opt(1, "encoding processes (default 1: the Rust tokenizer already uses every core)",
                       parse=positive_int)
    skip_bad: bool = opt(False, "skip unreadable records instead of stopping")
    overwrite: bool = opt(False, "replace --output when it holds a previous chatbot-preprocess output, and "
                                 "--vocab-out when it holds a vocabulary (never anything else)")
    quiet: bool = opt(False, "no progress bar and no summary table")

    def __post_init__(self):
        if not self.corpus:
            raise ValueError("give one or more corpus files to encode")
        if self.max_len < 4:
            raise ValueError(f"--max-len must be >= 4 to hold [CLS] a [SEP] b [SEP], got {self.max_len}")
        if self.tokenizer and (self.vocab_out or self.vocab != str(VOCAB)):
            raise ValueError("give one of --vocab, --tokenizer or --vocab-out, not several")


# chatbot-train's default --output-dir, and what in it chat loads by default: the weights with the best
# validation perplexity first (later epochs may have overfitted), else the weights at the end.
TRAIN_OUTPUT = Path("model")
DEFAULT_MODELS = ("best", "final")


def default_model(output_dir: Path = TRAIN_OUTPUT) -> str:
    """`output_dir`/best if it exists, else `output_dir`/final: the model a plain `chatbot-chat` loads.

    Looked up without torch, so a missing model is said at once.

    Raises:
        FileNotFoundError: if neither exists, naming the newest checkpoint-N when there is one.
    """
    for name in DEFAULT_MODELS:
        if (output_dir / name).is_dir():
            return str(output_dir / name)
    steps = sorted(int(p.name.split("-")[1]) for p in output_dir.glob("checkpoint-*")
                   if p.name.split("-")[1].isdigit() and p.is_dir())
    missing = f"there is no {output_dir / 'best'} or {output_dir / 'final'} in {Path.cwd()}"
    if steps:
        newest = output_dir / f"checkpoint-{steps[-1]}"
        raise FileNotFoundError(f"{missing}, only checkpoints (a training that has not finished?). Chat with "
                                f"the newest: chatbot-chat --model {newest}; or finish the training: "
                                f"chatbot-train --resume auto")
    raise FileNotFoundError(f"{missing}. Train a model with `chatbot-train` (it writes them), or give "
                            "chatbot-chat --model DIR|ID: a folder written by chatbot-train or "
                            "`save_pretrained`, or a Hugging Face Hub id (org/name)")


@dataclass(frozen=True)
class ChatConfig:
    model: str | None = opt(None, "model folder written by chatbot-train, or a Hugging Face Hub id such as "
                                  "thu-coai/CDial-GPT_LCCC-base (default: model/best, the best validation "
                                  "perplexity, if it exists, else model/final)", metavar="DIR|ID",
                            aliases=("--model-path", "--dialogue-model-path"))
    device: str = opt("auto", "auto (CUDA if available), cpu, cuda or cuda:N", metavar="DEVICE",
                      aliases=("--no-cuda=cpu",))
    dtype: str = opt("auto", "weights: auto = bf16 on a GPU; on a CPU int8, else bf16, else fp32, by what "
                             "it runs natively; int8 is CPU-only", choices=DTYPES)
    max_history: int = opt(MAX_HISTORY, "turns the model sees, your new message included", parse=positive_int,
                           aliases=("--max-history-len",))
    seed: int | None = opt(None, "make replies reproducible (reply i uses seed + i)")
    mmi_model: str | None = opt(None, "backward model folder or Hub id (chatbot-train --reverse) that picks "
                                      "the best of --candidates", metavar="DIR|ID",
                                aliases=("--mmi-model-path",))
    log_dir: str | None = opt(None, "folder for the transcript saved on exit (default: "
                                    "$XDG_DATA_HOME/chatbot/transcripts, else "
                                    "~/.local/share/chatbot/transcripts; a piped chat saves one only when "
                                    "this is given)", metavar="DIR",
                              aliases=("--save-samples-path",))
    transcript: bool = opt(True, "save a transcript on exit")
    history_file: str = opt(str(Path.home() / ".chatbot_history"),
                            "keeps the lines you type, for Up-arrow recall across sessions", metavar="FILE")

    def model_path(self) -> str:
        """--model, else `default_model()`."""
        return self.model or default_model()


@dataclass(frozen=True)
class EvalConfig:
    model: str = opt("model/final", "model folder or Hub id", metavar="DIR|ID")
    data: str = opt(str(SAMPLE_VALID), "corpus file or chatbot-preprocess folder (default: the bundled "
                                       "sample's validation dialogues)", metavar="PATH")
    format: str = opt("auto", "corpus format", choices=FORMATS)
    split: str | None = opt(None, "LCCC split to read", metavar="NAME")
    skip_bad: bool = opt(False, "skip unreadable corpus records instead of stopping")
    loss_on: str | None = opt(None, "tokens scored for perplexity (default: what the model was trained on)",
                              choices=LOSS_ON)
    batch_size: int = opt(16, "examples per forward pass", parse=positive_int)
    num_samples: int | None = opt(None, "evaluate a seeded random subset of N examples", parse=positive_int,
                                  metavar="N")
    seed: int = opt(42, "subset and sampling seed")
    greedy: bool = opt(False, "also generate greedily and report both")
    generate: bool = opt(True, "generate replies and score them (--no-generate: perplexity only)")
    max_history: int = opt(MAX_HISTORY, "turns the model sees", parse=positive_int)
    examples: int = opt(3, "side-by-side samples to print")
    output: str | None = opt(None, "write the full report (metrics and every sample) as JSON", metavar="FILE")
    overwrite: bool = opt(False, "replace --output when it holds a previous chatbot-eval report")
    device: str = opt("auto", "auto, cpu, cuda or cuda:N", metavar="DEVICE")
    dtype: str = opt("fp32", "weights to score: fp32 (the model itself), "
                             "or what chatbot-chat runs: auto, bf16, int8", choices=DTYPES)
    quiet: bool = opt(False, "no progress bars, table or samples")


@dataclass(frozen=True)
class ServeConfig:
    model: str = opt("model/final", "model folder written by chatbot-train, or a Hugging Face Hub id",
                     metavar="DIR|ID")
    served_model_name: str | None = opt(None, "the model id clients see and send (default: the --model "
                                              "value; for an absolute path, its last folder's name)",
                                        metavar="NAME")
    host: str = opt("127.0.0.1", "address to listen on; 0.0.0.0 opens the server to the network",
                    metavar="HOST")
    port: int = opt(8000, "port to listen on (0 = any free port)", parse=port_number)
    api_key: str | None = opt(None, "require `Authorization: Bearer KEY` on /v1/* (default: "
                                    "$CHATBOT_API_KEY if set, else no key; an empty one is refused)",
                                metavar="KEY")
    device: str = opt("auto", "auto (CUDA if available), cpu, cuda or cuda:N", metavar="DEVICE")
    dtype: str = opt("auto", "weights, as chatbot-chat's --dtype: auto, fp32, bf16 or int8", choices=DTYPES)
    max_batch: int = opt(16, "replies decoded together in one batch", parse=positive_int)
    max_concurrent: int = opt(64, "requests held at once, decoding or queued; more get HTTP 429",
                              parse=positive_int)
    max_body_bytes: int = opt(2**20, "larger request bodies get HTTP 413", parse=positive_int)
    max_message_chars: int = opt(8000, "longer messages get HTTP 400", parse=positive_int)
    cors_origin: list[str] = opt([], "let pages from ORIGIN (e.g. https://example.com) call the API; "
                                     "repeatable (default: none, CORS off)", metavar="ORIGIN")
    allowed_host: list[str] = opt([], "also answer requests addressed to HOST (a name or address as clients "
                                      "write it in the URL: chat.example.com, 192.168.1.5, [fe80::1]; * for "
                                      "any); repeatable (default: 127.0.0.1, localhost, [::1] and the --host "
                                      "address; requests to any other name get HTTP 400)", metavar="HOST")
    read_timeout: float = opt(30.0, "seconds a client has to send a request's headers, and again its body; "
                                    "slower connections are closed (a body: HTTP 408)", metavar="S")
    max_history: int = opt(MAX_HISTORY, "turns the model sees, the new message included", parse=positive_int)

    def __post_init__(self):
        if not 0 < self.read_timeout < math.inf:
            raise ValueError(f"--read-timeout must be > 0 seconds and finite, got {self.read_timeout}")
        for host in self.allowed_host:
            if host != "*" and not re.fullmatch(r"[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\]", host):
                raise ValueError(f"--allowed-host must be a host name or address as it appears in a URL, "
                                 f"without scheme or port (chat.example.com, 192.168.1.5, [fe80::1]), or * "
                                 f"for any; got {host!r}")

    def served_name(self) -> str:
        """--served-model-name, else --model as given; for an absolute path, its last folder's name,
        since the name is shown to clients (and by /health to anyone)."""
        if self.served_model_name:
            return self.served_model_name
        return Path(self.model).name if Path(self.model).is_absolute() else self.model

    def allowed_hosts(self) -> tuple[str, ...]:
        """The names a request's Host header may give (lowercase, without port): the loopback names,
        --host when it is one address, and --allowed-host; ("*",) for any."""
        if "*" in self.allowed_host:
            return ("*",)
        bound = (f"[{self.host}]" if ":" in self.host else self.host,)
        if self.host in ("0.0.0.0", "::"):  # every address: no one name
            bound = ()
        return tuple(dict.fromkeys(h.lower() for h in (*LOOPBACK_HOSTS, *bound, *self.allowed_host)))

    def api_key_in(self, environ: Mapping[str, str]) -> str | None:
        """The key the API requires: --api-key, else $CHATBOT_API_KEY from `environ`, else None (no key).

        Raises:
            ValueError: for an empty key (an unset variable in `--api-key "$KEY"` must not open the
                server to all), or one an Authorization header cannot carry.
        """
        for name, key in (("--api-key", self.api_key), ("CHATBOT_API_KEY", environ.get("CHATBOT_API_KEY"))):
            if key is None:
                continue
            if not key.strip():
                without = "leave out --api-key" if name == "--api-key" else "unset CHATBOT_API_KEY"
                raise ValueError(f"{name} is empty, which would serve the API without a key (was the "
                                 "variable holding the key unset?); give a key, e.g. from `openssl rand "
                                 f"-hex 16`, or {without} to serve without one")
            if not re.fullmatch(r"[\x21-\x7e]+", key):
                raise ValueError(f"{name} must be printable ASCII without spaces, which is what an "
                                 "Authorization header carries; the key given has other characters")
            return key
        return None


@dataclass(frozen=True)
class ExportConfig:
    to: str = opt(help="the runtime: ct2 = CTranslate2 (pip install 'chatbot-zh[ct2]'), onnx = ONNX Runtime "
                       "with a KV cache (pip install 'chatbot-zh[onnx]')", choices=("ct2", "onnx"))
    output: str = opt(help="folder to write the exported model into", short="-o", metavar="DIR")
    model: str = opt("model/final", "model folder written by chatbot-train, or a Hugging Face Hub id",
                     metavar="DIR|ID")
    quantization: str = opt("int8", "weights of the linear layers: int8 (smaller, faster on a CPU) or fp32",
                            choices=("int8", "fp32"))
    overwrite: bool = opt(False, "replace --output when it holds a previous chatbot-export output "
                                 "(never anything else)")
