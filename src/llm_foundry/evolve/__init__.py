"""H2Q-Evo: offline local training and population-based self-evolution with an accept/reject gate."""

from ..config.evolve import EvolveOptions, TrainOptions
from .corpus import create_sample_data, load_corpus, make_split
from .evolution import Evolution, Genome, heldout_report
from .local_train import Compute, EvolveInterrupted, run_steps, train
from .state import DEFAULT_STATE_DIR, StatePaths, write_model_dir
from .stats import load_stats, plot_stats, print_stats

__all__ = ["create_sample_data", "load_corpus", "make_split", "EvolveOptions", "Evolution", "Genome",
           "heldout_report", "Compute", "EvolveInterrupted", "TrainOptions", "run_steps", "train",
           "DEFAULT_STATE_DIR", "StatePaths", "write_model_dir", "load_stats", "plot_stats", "print_stats"]
