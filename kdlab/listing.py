"""``kdlab list``: registry names with a one-line description (models: parameters, MACs and taps)."""

from __future__ import annotations


def _first_line(text: str | None) -> str:
    return (text or "").strip().splitlines()[0] if (text or "").strip() else ""


def list_registry(what: str, verbose: bool = False) -> str:
    """A table (plain text) of the registered ``models``, ``methods`` or ``datasets``."""
    from rich.console import Console
    from rich.table import Table

    table = Table(show_lines=False)
    if what == "methods":
        from kdlab.methods import METHODS

        table.add_column("method")
        table.add_column("description")
        for name in METHODS.names():
            cls = METHODS.get(name)
            table.add_row(name, METHODS.meta(name).get("description") or _first_line(cls.__doc__))
    elif what == "datasets":
        from kdlab.data import DATASETS, dataset_names

        table.add_column("dataset")
        table.add_column("description")
        for name in dataset_names():
            table.add_row(name, DATASETS.meta(name).get("description") or _first_line(DATASETS.get(name).__doc__))
    else:
        from kdlab.models import MODELS, count_parameters, create, model_names

        table.add_column("model")
        table.add_column("family")
        if verbose:
            for col in ("params (100 classes; ImageNet 1000)", "MACs", "taps"):
                table.add_column(col)
        families = {"cifar": 0, "imagenet": 1}
        names = sorted(model_names(), key=lambda n: families.get(MODELS.meta(n).get("family"), 2))
        for name in names:
            meta = MODELS.meta(name)
            row = [name, str(meta.get("family", ""))]
            if verbose:
                model = create(name, num_classes=1000 if meta.get("family") == "imagenet" else 100)
                row.append(f"{count_parameters(model):,}")
                row.append(_macs(model))
                row.append(" ".join(model.tap_names()))
            table.add_row(*row)
    console = Console(width=200, record=True, force_terminal=False)
    with console.capture() as cap:
        console.print(table)
    return cap.get()


def _macs(model) -> str:
    try:
        from kdlab.models.flops import count_flops
    except ImportError:
        return "-"
    return f"{count_flops(model, model.input_size) / 1e6:,.1f}M"
