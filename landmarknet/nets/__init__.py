"""The project's networks, generated as prototxt: the catalogue and the file writer's content.

Every network gets a folder ``prototxt/<name>/`` with ``train_val.prototxt`` (Input layers per
phase, losses in TRAIN and TEST), ``deploy.prototxt`` (Input ``data`` 1x3xHxW, no losses) and
``solver.prototxt``. ``tools/generate_prototxt.py`` writes them; tests check they are current.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from landmarknet.netspec import NetSpec, generated_header, solver_text
from landmarknet.nets.heatmap import HEATMAP_NETS, HeatmapConfig, heatmap_net, heatmap_solver
from landmarknet.nets.squeezenet import SQUEEZE_NETS, SqueezeConfig, squeeze_net, squeeze_solver

__all__ = ["Network", "NETWORKS", "PROTOTXT_DIR", "generated_files", "network"]

#: Where the generated files live, relative to the repository root.
PROTOTXT_DIR = "prototxt"

#: Validation faces per data set (../shared/DATA.md), for the solvers' test_iter.
VAL_SIZES = {"ytf68": 343, "ytf77": 338, "cuhk5": 584}
_DATASET_OF_POINTS = {5: "cuhk5", 68: "ytf68", 77: "ytf77"}


@dataclass(frozen=True)
class Network:
    """One generated network: its config and how to write its three files."""

    name: str
    family: str  # "heatmap" or "squeeze"
    config: Union[HeatmapConfig, SqueezeConfig]
    summary: str

    @property
    def dataset(self) -> str:
        """The ../shared data set it trains on."""
        return _DATASET_OF_POINTS[self.config.points]

    @property
    def folder(self) -> str:
        """``prototxt/<name>``, relative to the repository root."""
        return f"{PROTOTXT_DIR}/{self.name}"

    @property
    def source(self) -> str:
        """The generator module, as a path."""
        return ("landmarknet/nets/heatmap.py" if self.family == "heatmap"
                else "landmarknet/nets/squeezenet.py")

    def net(self, deploy: bool = False) -> NetSpec:
        """The NetSpec of the train_val (default) or deploy net."""
        if self.family == "heatmap":
            return heatmap_net(self.config, deploy)
        return squeeze_net(self.config, deploy)

    def solver(self) -> dict:
        """The solver fields (net path relative to the repository root)."""
        path = f"{self.folder}/train_val.prototxt"
        fn = heatmap_solver if self.family == "heatmap" else squeeze_solver
        return fn(self.config, path, VAL_SIZES[self.dataset])

    def _call(self, what: str) -> str:
        table = "HEATMAP_NETS" if self.family == "heatmap" else "SQUEEZE_NETS"
        fn = {"heatmap": "heatmap", "squeeze": "squeeze"}[self.family]
        cfg = f"{table}[{self.name!r}][0]"
        if what == "solver":
            return f"{fn}_solver({cfg}, ...)"
        return f"{fn}_net({cfg}, deploy={what == 'deploy'})"

    def files(self) -> dict[str, str]:
        """Relative path -> text of the three files."""
        out = {}
        for what, title in (("train_val", "train/val net (Input layers per phase, losses in "
                                          "TRAIN and TEST)"),
                            ("deploy", "deploy net (Input data, no losses)")):
            header = generated_header(self.source, self._call(what),
                                      f"{self.name}: {title}.")
            header.insert(1, self.summary[0].upper() + self.summary[1:] + ".")
            text = self.net(deploy=what == "deploy").to_text(header)
            out[f"{self.folder}/{what}.prototxt"] = text
        header = generated_header(self.source, self._call("solver"), f"{self.name}: solver.")
        out[f"{self.folder}/solver.prototxt"] = solver_text(self.solver(), header)
        return out


def _catalogue() -> dict[str, Network]:
    nets = {}
    for name, (cfg, summary) in HEATMAP_NETS.items():
        nets[name] = Network(name, "heatmap", cfg, summary)
    for name, (cfg, summary) in SQUEEZE_NETS.items():
        nets[name] = Network(name, "squeeze", cfg, summary)
    return nets


#: name -> Network, in documentation order.
NETWORKS: dict[str, Network] = _catalogue()


def network(name: str) -> Network:
    """The network of that name (KeyError listing the known ones)."""
    try:
        return NETWORKS[name]
    except KeyError:
        raise KeyError(f"no network {name!r}; known: {', '.join(NETWORKS)}") from None


def generated_files() -> dict[str, str]:
    """Every generated prototxt: relative path -> text."""
    out: dict[str, str] = {}
    for net in NETWORKS.values():
        out.update(net.files())
    return out
