"""The `deltanet` command line. Subcommands:

  check          verify the chunked op against the float64 recurrence and print a CPU speed table
  train          train a model (deltanet.train): with no options, a small byte-level DeltaNet on the Python
                 standard library's source, on the CPU in a few minutes
  generate       text from a checkpoint, streamed as it comes (deltanet.eval.generate)
  eval ppl       perplexity and bits per byte on held-out text (deltanet.eval.perplexity)
  eval mqar      multi-query associative recall: train and test small models (deltanet.eval.mqar)
  eval harness   zero-shot tasks through lm-eval (deltanet.eval.harness)
  eval compare   language models of several architectures at equal size and tokens (deltanet.eval.compare)
  bench kernels  the delta-rule kernels against attention and the recurrence, tables and plots
  bench model    training throughput and decoding of DeltaNet, its hybrids and Transformer++

Each command below `generate` lives in a module with `add_arguments(parser)` and `run(args) -> int`; its
docstring's first paragraph is the command's --help description.
"""

from __future__ import annotations

import argparse
import sys
import typing


def _check(args: argparse.Namespace) -> int:
    import torch

    from deltanet.benchmarks import ops_cpu
    from deltanet.ops import chunk_delta_rule, l2_normalize, recurrent_delta_rule

    g = torch.Generator().manual_seed(0)
    B, T, H, K, V = 2, 333, 2, 32, 48
    q = torch.randn(B, T, H, K, generator=g, dtype=torch.float64)
    k = l2_normalize(torch.randn(B, T, H, K, generator=g, dtype=torch.float64))
    v = torch.randn(B, T, H, V, generator=g, dtype=torch.float64)
    beta = 2 * torch.rand(B, T, H, generator=g, dtype=torch.float64)
    o_ref, s_ref = recurrent_delta_rule(q, k, v, beta, output_final_state=True)
    ok = True
    print(f"# self-check: chunked vs float64 recurrence, B={B} T={T} H={H} K={K} V={V}")
    for dtype, bound in ((torch.float64, 1e-10), (torch.float32, 1e-5)):
        o, s = chunk_delta_rule(*(t.to(dtype) for t in (q, k, v, beta)), output_final_state=True)
        err = ((o.double() - o_ref).abs().max() / o_ref.abs().max()).item()
        status = "ok" if err <= bound else "FAIL"
        ok &= err <= bound
        print(f"{str(dtype):>15}: max rel error {err:.2e} (bound {bound:.0e}) {status}")
    print()
    ops_cpu.run(seq_lens=tuple(args.seq_lens), repeats=args.repeats)
    return 0 if ok else 1


def _train(args: argparse.Namespace) -> int:
    from deltanet.train.config import FIELDS, build_config, parse_model_config_item, read_config_file
    from deltanet.train.errors import TrainError
    from deltanet.train.trainer import train

    overrides = {name: value for name, value in vars(args).items() if name in FIELDS}
    try:
        if "model_config" in overrides:
            items = overrides["model_config"]
            overrides["model_config"] = dict(parse_model_config_item(item) for item in items)
        file_settings = read_config_file(args.config) if args.config else {}
        config = build_config(file_settings, overrides)
        summary = train(config)
    except TrainError as error:
        print(f"deltanet train: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # a full disk, a folder without write permission: no traceback for those
        print(f"deltanet train: error: {error.strerror or error}"
              + (f": {error.filename}" if error.filename else ""), file=sys.stderr)
        return 2
    return 130 if summary.get("interrupted") else 0


class OneLineErrorParser(argparse.ArgumentParser):
    """Bad options end in one line naming the option (and --help), not in the whole usage block."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _add_train_options(parser: argparse.ArgumentParser) -> None:
    """One option per TrainConfig field, documented by the field's help; only the options given override
    the config file and the defaults."""
    import dataclasses

    from deltanet.train.config import TYPES, TrainConfig

    parser.add_argument("--config", metavar="FILE", help="settings from a .toml or .yaml file (keys: the "
                        "options below without '--', with '_' for '-'); options given here override it")
    for field in dataclasses.fields(TrainConfig):
        flag = "--" + field.name.replace("_", "-")
        kind = TYPES[field.name]
        default = field.default_factory() if field.default is dataclasses.MISSING else field.default
        help_text = f"{field.metadata['help']} (default: {default!r})".replace("%", "%%")
        common = dict(dest=field.name, default=argparse.SUPPRESS, help=help_text)
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **common)
        elif field.name == "model_config":
            parser.add_argument(flag, action="append", metavar="KEY=VALUE", **common)
        elif typing.get_origin(kind) is list:
            item = typing.get_args(kind)[0]
            parser.add_argument(flag, nargs=2 if field.name == "adam_betas" else "+", type=item,
                                metavar=item.__name__.upper(), **common)
        else:
            parser.add_argument(flag, type=kind, metavar=kind.__name__.upper(), **common)


# (words after "deltanet", module, one-line help)
COMMANDS = [
    (("generate",), "deltanet.eval.generate", "generate text from a checkpoint, streamed, with tokens/s"),
    (("eval", "ppl"), "deltanet.eval.perplexity", "perplexity and bits per byte of a checkpoint on text"),
    (("eval", "mqar"), "deltanet.eval.mqar", "multi-query associative recall (Zoology): train, test models"),
    (("eval", "harness"), "deltanet.eval.harness", "zero-shot tasks through lm-eval (the 'harness' extra)"),
    (("eval", "compare"), "deltanet.eval.compare", "train architectures alike; table and loss curves"),
    (("bench", "kernels"), "deltanet.benchmarks.kernels", "time the delta-rule kernels against attention"),
    (("bench", "model"), "deltanet.benchmarks.model", "training throughput and decoding of whole models"),
]
GROUP_HELP = {
    "eval": "evaluate checkpoints and architectures: ppl, mqar, harness, compare",
    "bench": "GPU benchmarks with tables and PNG plots: kernels, model",
}


def _command_runner(prog: str, run: typing.Callable[[argparse.Namespace], int]):
    """run(args), with the user's mistakes (deltanet.errors.UserError: TrainError, EvalError, ...) and OS
    errors as one line and status 2."""

    def run_command(args: argparse.Namespace) -> int:
        from deltanet.errors import UserError

        try:
            return run(args)
        except UserError as error:
            print(f"{prog}: error: {error}", file=sys.stderr)
        except OSError as error:
            where = f": {error.filename}" if error.filename else ""
            print(f"{prog}: error: {error.strerror or error}{where}", file=sys.stderr)
        return 2

    return run_command


def _add_commands(sub, argv: list[str] | None) -> None:
    """Add the COMMANDS. With `argv`, only the module of the command it names is imported (the others'
    options are not needed to parse it, and importing lm-eval's wrapper or the benchmarks costs seconds)."""
    import importlib

    words_given = [word for word in argv if not word.startswith("-")][:2] if argv is not None else None
    groups: dict[str, typing.Any] = {}
    for words, module_name, help_text in COMMANDS:
        parent = sub
        if len(words) == 2:
            if words[0] not in groups:
                group = sub.add_parser(words[0], help=GROUP_HELP[words[0]], description=GROUP_HELP[words[0]])
                groups[words[0]] = group.add_subparsers(dest="subcommand", required=True,
                                                        parser_class=OneLineErrorParser)
            parent = groups[words[0]]
        if words_given is not None and list(words) != words_given[:len(words)]:
            parent.add_parser(words[-1], help=help_text)
            continue
        module = importlib.import_module(module_name)
        description = (module.__doc__ or help_text).strip().split("\n\n")[0]
        parser = parent.add_parser(words[-1], help=help_text, description=description,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(parser)
        parser.set_defaults(func=_command_runner("deltanet " + " ".join(words), module.run))


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser of every command; with `argv` (the arguments to parse), only the named command's module
    is imported."""
    parser = argparse.ArgumentParser(prog="deltanet",
                                     description="DeltaNet: linear transformers with the delta rule.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineErrorParser)
    check = sub.add_parser("check", help="self-check the ops on this machine and print a CPU speed table")
    check.add_argument("--seq-lens", type=int, nargs="+", default=[1024, 4096],
                       help="sequence lengths to time (default: 1024 4096)")
    check.add_argument("--repeats", type=int, default=3,
                       help="timed runs of the chunked path, median (default: 3)")
    check.set_defaults(func=_check)
    train = sub.add_parser(
        "train", help="train a model (default: a small DeltaNet on this Python's standard library, CPU)",
        description="Train a DeltaNet (or a baseline) language model. With no options: a small byte-level "
        "DeltaNet on the source files of this Python's standard library, a few minutes on 2 CPU cores, then "
        "the held-out bits per byte and a generated sample. Settings come from the defaults, then --config, "
        "then the options given. Several processes: torchrun --nproc_per_node N -m deltanet train ...",
    )
    _add_train_options(train)
    train.set_defaults(func=_train)
    _add_commands(sub, argv)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv).parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
