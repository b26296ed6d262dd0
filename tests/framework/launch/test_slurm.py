"""SLURM's variables as `seqtune train` reads them under srun: the compact node list, and which launch
keys they fill (those the recipe leaves at their defaults). The real two-node run is in test_launcher.py."""
from __future__ import annotations

import pytest

from framework.errors import UserError
from framework.launch.launcher import expand_nodelist, from_slurm, slurm_settings, srun_step


@pytest.mark.parametrize("nodelist, hosts", [
    ("gpu01", ["gpu01"]),
    ("gpu[01-04,07]", ["gpu01", "gpu02", "gpu03", "gpu04", "gpu07"]),
    ("gpu[9-11]", ["gpu9", "gpu10", "gpu11"]),  # no padding: numbers grow
    ("a[1-2],b7,c[08-09]", ["a1", "a2", "b7", "c08", "c09"]),
    ("rack[1-2]-n[01-02]", ["rack1-n01", "rack1-n02", "rack2-n01", "rack2-n02"]),
    ("node[3]", ["node3"]),
    ("127.0.0.[1-2]", ["127.0.0.1", "127.0.0.2"]),
])
def test_a_compact_node_list_expands_in_order(nodelist, hosts):
    assert expand_nodelist(nodelist) == hosts


def srun(node: int, nodes: int = 2, **more: str) -> dict[str, str]:
    return {"SLURM_JOB_ID": "77", "SLURM_STEP_ID": "0", "SLURM_STEP_NUM_NODES": str(nodes),
            "SLURM_STEP_NUM_TASKS": str(nodes), "SLURM_STEP_NODELIST": "gpu[01-02]", "SLURM_NODEID": str(node),
            "SLURM_PROCID": str(node), "SLURM_JOB_NODELIST": "gpu[01-02]", "SLURM_LAUNCH_NODE_IPADDR": "10.0.0.99",
            **more}


def test_the_step_is_read_from_sruns_variables():
    step = srun_step(srun(1, SLURM_GPUS_ON_NODE="8"))
    assert (step.nodes, step.node, step.tasks, step.main_host, step.gpus_per_node) == (2, 1, 2, "gpu01", 8)


def test_a_batch_scripts_own_shell_is_not_a_step():
    """sbatch runs the script on the first node only, with the job's variables but no step's."""
    batch = {k: v for k, v in srun(0).items() if not k.startswith("SLURM_STEP")}
    assert srun_step(batch) is None and srun_step({}) is None


def test_the_job_variables_fill_in_for_missing_step_ones():
    env = {**srun(1), "SLURM_NNODES": "2", "SLURM_JOB_NODELIST": "n[5-6]"}
    del env["SLURM_STEP_NODELIST"], env["SLURM_NODEID"]
    step = srun_step(env)
    assert (step.node, step.main_host) == (1, "n5")  # SLURM_PROCID: one task per node


def test_unset_keys_come_from_slurm_and_one_line_says_so():
    overrides, line = slurm_settings(srun_step(srun(1, SLURM_GPUS_ON_NODE="8")), explicit={})
    assert overrides == ["launch.num_machines=2", "launch.machine_rank=1", "launch.main_process_ip=gpu01",
                         "launch.num_processes=16"]
    assert line.startswith("launch: from SLURM: machine 1 of 2, main machine gpu01, 16 processes")


def test_keys_the_recipe_sets_win():
    explicit = {"launch.main_process_ip": "10.1.1.1", "launch.num_processes": 8, "launch.num_machines": 2}
    overrides, line = slurm_settings(srun_step(srun(0, SLURM_GPUS_ON_NODE="8")), explicit)
    assert overrides == ["launch.machine_rank=0"]
    assert "main machine 10.1.1.1" in line


def test_one_node_without_gpus_changes_nothing():
    assert slurm_settings(srun_step(srun(0, nodes=1)), explicit={}) == ([], None)


@pytest.mark.parametrize("env, explicit, named", [
    (srun(0, SLURM_STEP_NUM_TASKS="16"), {}, "srun --ntasks-per-node=1"),
    (srun(1), {"launch.num_machines": 4}, "leave launch.num_machines at its default"),
    (srun(0), {"launch.machine_rank": 1}, "leave launch.machine_rank at its default"),
])
def test_what_cannot_work_under_srun_is_refused_with_its_fix(env, explicit, named):
    with pytest.raises(UserError) as error:
        slurm_settings(srun_step(env), explicit)
    assert named in str(error.value) and "\n" not in str(error.value)


def test_an_unreadable_nodelist_is_a_user_error():
    with pytest.raises(UserError, match="launch.main_process_ip"):
        srun_step(srun(0, SLURM_STEP_NODELIST="gpu[a-b]"))


def test_a_recipe_spelling_out_the_defaults_still_takes_them_from_slurm(repo, monkeypatch):
    """The tulu3 recipe writes num_machines 1, machine_rank 0 and main_process_ip 127.0.0.1 (accelerate's
    flags as open-instruct passes them); under srun on two nodes they cannot be meant, so SLURM's win.
    Its num_processes (4, not the default) and an address given on the command line stay."""
    monkeypatch.chdir(repo)
    recipe = "recipes/tulu3/gemma2-2b-sft.yaml"
    overrides, _ = from_slurm(recipe, [], srun(1, SLURM_GPUS_ON_NODE="8"))
    assert overrides == ["launch.num_machines=2", "launch.machine_rank=1", "launch.main_process_ip=gpu01"]
    overrides, _ = from_slurm(recipe, ["launch.main_process_ip=10.2.2.2"], srun(1))
    assert overrides == ["launch.num_machines=2", "launch.machine_rank=1"]
    assert from_slurm(recipe, [], {}) == ([], None)  # outside srun nothing is read
