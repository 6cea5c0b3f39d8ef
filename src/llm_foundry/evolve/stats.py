"""``evolution_stats.json``: the source's four counters plus a per-cycle history, a table and a plot."""

from __future__ import annotations

from pathlib import Path

from ..utils.errors import FoundryError
from ..utils.io import atomic_write_bytes, atomic_write_json, read_json


def empty_stats() -> dict:
    return {"total_evolutions": 0, "successful_evolutions": 0, "failed_evolutions": 0, "average_improvement": 0.0,
            "champion_val_loss": None, "champion_quick_loss": None, "champion_digest": None, "champion_hparams": None,
            "compute": {"train_tokens": 0, "forward_tokens": 0, "total": 0.0}, "history": []}


def load_stats(path: str | Path) -> dict:
    """The stats file, or empty stats when there is none yet."""
    path = Path(path)
    if not path.is_file():
        return empty_stats()
    data = read_json(path, "evolution stats")
    if not isinstance(data, dict) or not isinstance(data.get("history"), list):
        raise FoundryError(f"not an evolution stats file: {path}")
    return {**empty_stats(), **data}


def record_cycle(stats: dict, entry: dict) -> dict:
    """Add one finished cycle (once: a cycle already in the history is not counted again).

    The counters are recomputed from the history, so they always add up:
    ``total_evolutions == successful_evolutions + failed_evolutions``.
    """
    if any(h["cycle"] == entry["cycle"] for h in stats["history"]):
        return stats
    stats["history"].append(entry)
    hist = stats["history"]
    accepted = [h for h in hist if h["decision"] == "accepted"]
    stats["total_evolutions"] = len(hist)
    stats["successful_evolutions"] = len(accepted)
    stats["failed_evolutions"] = len(hist) - len(accepted)
    # Mean held-out loss improvement (nats/token) of the accepted cycles.
    stats["average_improvement"] = round(sum(h["improvement"] for h in accepted) / len(accepted), 6) if accepted else 0.0
    for key in ("train_tokens", "forward_tokens"):
        stats["compute"][key] = sum(h["compute"][key] for h in hist)
    stats["compute"]["total"] = round(sum(h["compute"]["total"] for h in hist), 1)
    stats["champion_val_loss"] = entry["champion_loss_after"]
    stats["champion_hparams"] = entry["champion_hparams_after"]
    stats["champion_quick_loss"] = entry.get("champion_quick_after")
    stats["champion_digest"] = entry.get("champion_digest")
    return stats


def save_stats(path: str | Path, stats: dict) -> None:
    atomic_write_json(path, stats)


def print_stats(stats: dict, console) -> None:
    """The source's summary lines, then one table row per cycle."""
    from rich.table import Table

    console.print("evolution statistics:")
    console.print(f"  total evolutions: {stats['total_evolutions']}")
    console.print(f"  successful evolutions: {stats['successful_evolutions']}")
    console.print(f"  failed evolutions: {stats['failed_evolutions']}")
    console.print(f"  average improvement: {stats['average_improvement']:.4f}")
    if stats.get("champion_val_loss") is not None:
        console.print(f"  champion held-out loss: {stats['champion_val_loss']:.4f}")
    console.print(f"  compute spent: {stats['compute']['total']:,.0f} token-equivalents")
    if not stats["history"]:
        return
    table = Table(title="cycles (* = chosen candidate)")
    for col in ("cycle", "decision", "champion loss", "cand", "lr", "batch", "hard", "self", "held-out loss",
                "diversity", "repetition"):
        table.add_column(col, justify="right" if col not in ("decision",) else "left")
    for h in stats["history"]:
        for j, c in enumerate(h["candidates"]):
            hp = c["hparams"]
            loss = f"{c['val_loss']:.4f}" if c.get("val_loss") is not None else f"stopped ({c.get('quick_loss', 0):.3f})"
            mark = "*" if c["id"] == h["best_candidate"] else ""
            first = j == 0
            table.add_row(str(h["cycle"]) if first else "", h["decision"] if first else "",
                          f"{h['champion_loss_before']:.4f} -> {h['champion_loss_after']:.4f}" if first else "",
                          f"{c['id']}{mark}", f"{hp['lr']:.2e}", str(hp["batch_size"]), f"{hp['hard_frac']:.2f}",
                          f"{hp['self_frac']:.2f}", loss, f"{c['diversity']:.3f}" if "diversity" in c else "-",
                          f"{c['repetition']:.3f}" if "repetition" in c else "-", end_section=j == len(h["candidates"]) - 1)
    console.print(table)


def plot_stats(stats: dict, path: str | Path) -> Path | None:
    """A PNG of the champion's held-out loss and every candidate's loss over cycles."""
    if not stats["history"]:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hist = stats["history"]
    fig, ax = plt.subplots(figsize=(7, 4))
    xs = [0] + [h["cycle"] for h in hist]
    ys = [hist[0]["champion_loss_before"]] + [h["champion_loss_after"] for h in hist]
    ax.step(xs, ys, where="post", color="black", label="champion (held-out loss)")
    for h in hist:
        for c in h["candidates"]:
            if c.get("val_loss") is not None:
                color = "tab:green" if h["decision"] == "accepted" and c["id"] == h["best_candidate"] else "tab:gray"
                ax.scatter(h["cycle"], c["val_loss"], color=color, s=18, zorder=3)
    ax.scatter([], [], color="tab:green", s=18, label="accepted candidate")
    ax.scatter([], [], color="tab:gray", s=18, label="other candidates")
    ax.set_xlabel("cycle")
    ax.set_ylabel("held-out loss (nats/token)")
    ax.set_title("H2Q-Evo evolution")
    ax.legend()
    fig.tight_layout()
    import io

    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=100)
    plt.close(fig)
    path = Path(path)
    atomic_write_bytes(path, png.getvalue())
    return path
