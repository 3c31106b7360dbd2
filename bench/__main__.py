"""Runs benchmarks: `python -m bench [loss] [augment] [--device cuda|cpu] [--quick]`."""
import argparse
import importlib

import torch

BENCHMARKS = ("loss", "augment")


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("names", nargs="*", default=list(BENCHMARKS), help=f"any of {BENCHMARKS}")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="small shapes, few repetitions (smoke run)")
    args = parser.parse_args()
    for name in args.names:
        if name not in BENCHMARKS:
            parser.error(f"unknown benchmark {name!r}; choose from {BENCHMARKS}")
        module = importlib.import_module(f"bench.{name}")
        path = module.main(args)
        print(f"bench {name}: results in {path}")


if __name__ == "__main__":
    main()
