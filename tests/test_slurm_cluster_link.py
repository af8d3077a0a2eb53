"""The test cluster's link at SLURM's default config path: a link a killed test run left behind is
replaced; a config that belongs to a live test cluster, or to anything else, is never touched."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def cluster(monkeypatch, tmp_path):
    spec = importlib.util.spec_from_file_location("slurm_test_cluster", ROOT / "scripts" / "slurm_test_cluster.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "DEFAULT_CONF", tmp_path / "etc" / "slurm.conf")
    return module


def state_dir(cluster, root: Path, cluster_name: str = "diffusertest", slurmctld_pid: int | None = None):
    layout = cluster.Layout(root=root)
    root.mkdir(parents=True)
    layout.conf.write_text(f"ClusterName={cluster_name}\nSlurmctldHost=localhost(127.0.0.1)\n")
    if slurmctld_pid is not None:
        layout.pid_file("slurmctld").write_text(f"{slurmctld_pid}\n")
    return layout


def dead_pid() -> int:
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    return finished.pid


def test_a_link_to_a_killed_test_cluster_is_replaced(cluster, tmp_path):
    killed = state_dir(cluster, tmp_path / "killed", slurmctld_pid=dead_pid())  # its files are still there
    cluster.DEFAULT_CONF.parent.mkdir(parents=True)
    cluster.DEFAULT_CONF.symlink_to(killed.conf)
    new = state_dir(cluster, tmp_path / "new")
    cluster.link_default_conf(new)
    assert Path(os.readlink(cluster.DEFAULT_CONF)) == new.conf


def test_a_link_whose_target_is_gone_is_replaced(cluster, tmp_path):
    cluster.DEFAULT_CONF.parent.mkdir(parents=True)
    cluster.DEFAULT_CONF.symlink_to(tmp_path / "removed" / "slurm.conf")
    new = state_dir(cluster, tmp_path / "new")
    cluster.link_default_conf(new)
    assert Path(os.readlink(cluster.DEFAULT_CONF)) == new.conf


def test_a_link_to_a_running_test_cluster_is_kept(cluster, tmp_path, monkeypatch):
    running = state_dir(cluster, tmp_path / "running", slurmctld_pid=os.getpid())
    monkeypatch.setattr(cluster, "is_ours", lambda pid, daemon, layout: pid == os.getpid())
    cluster.DEFAULT_CONF.parent.mkdir(parents=True)
    cluster.DEFAULT_CONF.symlink_to(running.conf)
    with pytest.raises(cluster.ClusterError, match="already exists"):
        cluster.link_default_conf(state_dir(cluster, tmp_path / "new"))
    assert Path(os.readlink(cluster.DEFAULT_CONF)) == running.conf


@pytest.mark.parametrize("as_link", [True, False])
def test_the_machines_own_slurm_config_is_kept(cluster, tmp_path, as_link):
    own = state_dir(cluster, tmp_path / "site", cluster_name="production")
    cluster.DEFAULT_CONF.parent.mkdir(parents=True)
    if as_link:
        cluster.DEFAULT_CONF.symlink_to(own.conf)
    else:
        cluster.DEFAULT_CONF.write_text(own.conf.read_text())
    with pytest.raises(cluster.ClusterError, match="already exists"):
        cluster.link_default_conf(state_dir(cluster, tmp_path / "new"))
    assert "production" in cluster.DEFAULT_CONF.read_text()
