"""`specfair` command line. Subcommands arrive with their issues; for now a demonstration of verify."""
import sys


def main(argv=None):
    from specfair_kernels.demo import main as demo

    return demo(argv if argv is not None else sys.argv[1:])
