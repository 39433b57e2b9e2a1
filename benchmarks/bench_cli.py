"""How fast the command line answers when nothing is computed: ``hpm --help``, ``hpm --version``, a subcommand's
help and an argument error, each a fresh process (what a user waits for). Target: well under a second each;
the ratio to ``import torch`` alone is printed beside.

    python benchmarks/bench_cli.py [--repeats 5]
"""
import argparse
import subprocess
import sys

from timing import median_seconds

COMMANDS = {"hpm --help": ["--help"], "hpm --version": ["--version"], "hpm eval --help": ["eval", "--help"],
            "hpm eval --eps abc (error)": ["eval", "x", "--eps", "abc"]}


def run(argv: list[str]) -> None:
    subprocess.run([sys.executable, "-m", "hpm.cli", *argv], capture_output=True, check=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch_import = median_seconds(lambda: subprocess.run([sys.executable, "-c", "import torch"], check=True),
                                  args.repeats)
    label = 'python -c "import torch"'
    print(f"{label:32s} {torch_import:6.2f} s  (for comparison)")
    for name, argv in COMMANDS.items():
        seconds = median_seconds(lambda: run(argv), args.repeats)
        print(f"{name:32s} {seconds:6.2f} s  ({seconds / torch_import:.2f} x importing torch)")


if __name__ == "__main__":
    main()
