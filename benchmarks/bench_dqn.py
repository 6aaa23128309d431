"""Benchmark: the reference DQN against stable-baselines3 on CartPole-v1, side by side.

Quality bars: with 50,000 environment steps per seed and 5 seeds, every seed first
reaches a greedy evaluation mean >= 475 (10 episodes), and the *final* policy averages >= 475
over 20 episodes in at least 4 of 5 seeds; 5 seeds in one population take at most 0.6 times the
wall time of one SB3 seed, and 10 seeds (``--seeds 100 ... 109``) less than one SB3 seed, with
final >= 475 in at least 8 of 10.

SB3 runs ``DQN`` with the rl-baselines3-zoo CartPole-v1 hyperparameters. Both agents are
evaluated with the same function (:func:`course.evaluation.evaluate_policy`, greedy, on
gymnasium's vector CartPole), every 2,500 steps with 10 episodes and at the end with 20 episodes
on seeds no training run uses. Both agents' times exclude the time spent in those evaluations
(ours: ``DQNResult.eval_time``; evaluation is single-threaded, so its wall time is also its CPU
time). Both wall and CPU (process) time are printed: on a shared machine the CPU time is the
steadier figure. Run it on an otherwise idle machine: a second busy process on the next core
slowed ours by a third (shared memory bandwidth). On a shared virtual machine the speed also
drifts by tens of percent over minutes, so ours is timed before and after SB3's runs and the
ratios use the mean of the two.

Usage::

    .venv/bin/python benchmarks/bench_dqn.py                # full: 5 seeds, ours and SB3
    .venv/bin/python benchmarks/bench_dqn.py --quick        # 2 seeds, no SB3
    .venv/bin/python benchmarks/bench_dqn.py --skip-sb3 --set "hidden=(512,)"   # another config
    .venv/bin/python benchmarks/bench_dqn.py --write-record   # the run Lesson 03 plots

``--write-record`` trains the default configuration on seeds 0-4 (``course.dqn.cartpole_record``)
and writes its curves, config and seeds to ``benchmarks/results/dqn_cartpole.json``
(``course.dqn.CARTPOLE_RECORD``); ``tests/test_dqn.py`` regenerates seed 0 and compares.

stable-baselines3 is a benchmark-only dependency (``pip install stable-baselines3``).

Tuning record (CartPole-v1, 50k steps, greedy evaluation; "first" = seeds whose evaluation mean
reached 475 at some point, "final" = seeds whose final policy averages >= 475 over 20 episodes;
all with Double DQN, Huber loss, gradient clip 10, 4 envs per agent, lr decaying linearly to 0
unless said otherwise):

- hidden (64, 64), lr 1e-3 or 2.5e-3, 0.25-0.5 updates per step, target every 50-250
  updates, hard or soft (tau 0.01): first 0-3/3, final 0-1/3; the greedy policy plateaus at
  100-250 with the cart drifting off the track.
- (128, 128), lr 2.3e-3 constant, no Double DQN (the zoo's recipe): first 3/3, final 1/3;
  the same with Double DQN and the decaying lr: final 3/3; with batch 128: first 6/6, final
  5/6 over seeds 0-5.
- lr 1e-3 instead of 2.3e-3: final 1/5 (batch 128) and 0/5 (batch 64); gamma 0.98: final 3/3
  but first success only at 45k; learning_starts 5k: final 2/3, no gain.
- hidden (256,): final 3/6; (512,): first 6/6, final 5/6 (seeds 0-5), the default.
- target every 32 updates: first 5/5 and earlier (10k-32k) but final 2/5 (collapses after
  solving); every 16: diverges (5/5 at 9); every 64: final 3/5; 32 growing to 256 over
  training: final 3/5 with (512,), 4/5 with (128, 128); lr decaying over 60% of training:
  final 2/5.
- (512,) with target every 128 (the previous default), seeds 0-4: first 4/5 (seed 2 never),
  final 4/5; the same with batch 64: first 3/5, final 1/5; with 0.25 updates per step and
  target every 64: first 2/5, final 2/5 (batch 256: 4/5, 3/5).
- (256,), target every 128: first 3/5, final 3/5; every 64: first 5/5, final 4/5 (seeds 0-4)
  and 5/5, 3/5 (seeds 5-9); every 64 growing to 256: 2/5, 2/5 and 3/5, 3/5 (slower target
  updates delay the first solution); every 64 with the lr reaching 0 at 80% of training:
  first 5/5, final 4/5 (seeds 0-4) and 5/5, 5/5 (seeds 5-9): the default. A (256,) layer
  moves half the data of a (512,) one per update, which is most of the cost on a CPU. With 8
  envs per agent instead of 4 (half as many, larger vector steps): 4/5, 2/5 and 5/5, 5/5.

Speed record (``--skip-sb3 --skip-solo``, the trainer against its version of commit c77b001,
the two run alternately on a shared machine whose speed drifted by tens of percent from run to
run, so only the ratios mean anything): CPU seconds, old -> new, 5 seeds (100-104) 59.0 -> 54.0
(1.09x) and 78.8 -> 48.5 (1.62x), 10 seeds (100-109) 102.0 -> 78.6 (1.30x); the step before the
last two small changes measured 53.3 -> 39.0 (1.37x) and 84.6 -> 61.1 (1.38x). The gains: the
agents' CartPoles stepped in one numpy call (:class:`course.population.AgentEnvs`), the plain
single-task update without autograd, fewer tensor operations per update. Every run gave the
same first/final counts as before (5/5, 4/5 and 10/10, 9/10): the new code computes the same
floats (tests compare it with the code it replaced, bit for bit).

Against SB3 on an idle machine, ``--seeds 100 101 102 103 104 --skip-solo``: ours first 5/5,
final 4/5, 38.3 s before SB3's runs and 53.4 s after them (mean 45.9 s; 35.8 s in a fresh
process: the run after SB3's, in the same process, is the slow one); SB3 75.0-90.6 s per seed
(mean 81.0 s), first 5/5, final 3/5: 5 seeds together in 0.57x of one SB3 seed. Then
``--seeds 100 ... 109 --skip-sb3 --skip-solo``: 80.5 s, first 10/10, final 9/10, 0.99x of
SB3's mean seed: the bar holds, with no margin to spare.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import time

import numpy as np
import torch

from course.dqn import (
    CARTPOLE_RECORD,
    DQNConfig,
    cartpole_record,
    cartpole_vec,
    evaluate,
    train_dqn,
)
from course.evaluation import evaluate_policy

SOLVED = 475.0
EVAL_EVERY = 2_500
FINAL_EPISODES = 20
FINAL_SEED = 10**6  # final evaluation seeds: FINAL_SEED + seed, used by no training run


ZOO = dict(  # rl-baselines3-zoo hyperparams/dqn.yml, CartPole-v1
    learning_rate=2.3e-3,
    batch_size=64,
    buffer_size=100_000,
    learning_starts=1_000,
    gamma=0.99,
    target_update_interval=10,
    train_freq=256,
    gradient_steps=128,
    exploration_fraction=0.16,
    exploration_final_eps=0.04,
    policy_kwargs=dict(net_arch=[256, 256]),
)


def first_solved(steps: list[int], means: list[float]) -> int | None:
    """First evaluation step whose mean return reaches the bar, or None."""
    return next((s for s, m in zip(steps, means, strict=True) if m >= SOLVED), None)


def run_ours(config: DQNConfig, seeds: list[int]) -> tuple[list[dict], float, float]:
    cpu_start = time.process_time()
    result = train_dqn(config, seeds=seeds, device="cpu")
    cpu = time.process_time() - cpu_start - result.eval_time
    rows = []
    for a, seed in enumerate(seeds):
        final = evaluate(result.network(a), n_episodes=FINAL_EPISODES, seed=FINAL_SEED + seed)
        means = result.eval_mean[a].tolist()
        rows.append(
            dict(
                seed=seed,
                first=first_solved(result.steps.tolist(), means),
                final=final.mean().item(),
                curve=means,
            )
        )
    return rows, result.wall_time - result.eval_time, cpu


def run_sb3(seed: int, total_steps: int) -> tuple[dict, float, float]:
    from stable_baselines3 import DQN
    from stable_baselines3.common.callbacks import BaseCallback

    eval_env = cartpole_vec(10)

    def greedy(model: DQN):
        return lambda obs: model.q_net(obs).argmax(dim=-1)

    class Evaluate(BaseCallback):
        def __init__(self) -> None:
            super().__init__()
            self.steps: list[int] = []
            self.means: list[float] = []
            self.eval_time = 0.0
            self.eval_cpu = 0.0

        def _on_step(self) -> bool:
            if self.num_timesteps % EVAL_EVERY == 0:
                start, cpu_start = time.perf_counter(), time.process_time()
                k = len(self.steps)
                returns = evaluate_policy(greedy(self.model), eval_env, 10, seed=seed * 1000 + k)
                self.steps.append(self.num_timesteps)
                self.means.append(returns.mean().item())
                self.eval_time += time.perf_counter() - start
                self.eval_cpu += time.process_time() - cpu_start
            return True

    start, cpu_start = time.perf_counter(), time.process_time()
    model = DQN("MlpPolicy", "CartPole-v1", seed=seed, device="cpu", verbose=0, **ZOO)
    callback = Evaluate()
    model.learn(total_timesteps=total_steps, callback=callback)
    wall = time.perf_counter() - start - callback.eval_time
    cpu = time.process_time() - cpu_start - callback.eval_cpu
    final = evaluate_policy(
        greedy(model), cartpole_vec(FINAL_EPISODES), FINAL_EPISODES, seed=FINAL_SEED + seed
    )
    row = dict(
        seed=seed,
        first=first_solved(callback.steps, callback.means),
        final=final.mean().item(),
        curve=callback.means,
    )
    return row, wall, cpu


def print_rows(
    name: str, rows: list[dict], walls: list[float | None], cpus: list[float | None]
) -> None:
    for row, wall, cpu in zip(rows, walls, cpus, strict=True):
        first = "never" if row["first"] is None else str(row["first"])
        wall_s = "" if wall is None else f"{wall:.1f}"
        cpu_s = "" if cpu is None else f"{cpu:.1f}"
        print(
            f"{name:<24}{row['seed']:>5}{first:>12}{row['final']:>13.1f}{wall_s:>10}{cpu_s:>10}",
            flush=True,
        )


def summary(rows: list[dict]) -> tuple[int, int]:
    return sum(r["first"] is not None for r in rows), sum(r["final"] >= SOLVED for r in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override a DQNConfig field (a Python literal), e.g. --set 'hidden=(512,)'",
    )
    parser.add_argument("--steps", type=int, default=None, help="override total_steps")
    parser.add_argument("--quick", action="store_true", help="seeds 0 1, no SB3, no solo run")
    parser.add_argument("--skip-sb3", action="store_true", help="do not run stable-baselines3")
    parser.add_argument("--skip-solo", action="store_true", help="skip the one-seed-alone run")
    parser.add_argument("--curves", action="store_true", help="print evaluation curves")
    parser.add_argument(
        "--write-record", action="store_true", help="write the stored run Lesson 03 plots"
    )
    args = parser.parse_args()
    if args.write_record:
        torch.set_num_threads(1)
        record = cartpole_record(args.seeds)
        CARTPOLE_RECORD.parent.mkdir(parents=True, exist_ok=True)
        CARTPOLE_RECORD.write_text(json.dumps(record, indent=1) + "\n")
        print(f"wrote {CARTPOLE_RECORD}")
        return
    if args.quick:
        args.seeds, args.skip_sb3, args.skip_solo = [0, 1], True, True
    torch.set_num_threads(1)
    overrides = {}
    for item in args.set:
        field, _, value = item.partition("=")
        overrides[field.strip()] = ast.literal_eval(value.strip())
    config = dataclasses.replace(DQNConfig(), **overrides)
    if args.steps is not None:
        config = dataclasses.replace(config, total_steps=args.steps)
    n = len(args.seeds)
    print(
        f"CartPole-v1, {config.total_steps} env steps per seed, seeds {args.seeds}, "
        f"overrides {overrides or 'none'}, torch threads {torch.get_num_threads()}"
    )
    print(f"config: {config}")
    print(
        f"{'agent':<24}{'seed':>5}{'first>=475':>12}{'final(20ep)':>13}{'wall s':>10}{'cpu s':>10}"
    )

    rows, wall, cpu = run_ours(config, args.seeds)
    print_rows(f"ours (population of {n})", rows, [None] * n, [None] * n)
    if args.curves:
        for row in rows:
            print(f"  curve seed {row['seed']}: " + " ".join(f"{m:.0f}" for m in row["curve"]))
    solo_wall = solo_cpu = None
    if not args.skip_solo:
        _, solo_wall, solo_cpu = run_ours(config, args.seeds[:1])
    first, final = summary(rows)
    print(
        f"ours: first>=475 in {first}/{n} seeds, final>=475 in {final}/{n}; "
        f"{n} seeds together: wall {wall:.1f} s, cpu {cpu:.1f} s "
        f"(per seed: wall {wall / n:.1f} s, cpu {cpu / n:.1f} s)"
        + (
            ""
            if solo_wall is None
            else f"; one seed alone: wall {solo_wall:.1f} s, cpu {solo_cpu:.1f} s"
        ),
        flush=True,
    )

    if args.skip_sb3:
        return
    sb3_rows, sb3_walls, sb3_cpus = [], [], []
    for seed in args.seeds:
        row, sb3_wall, sb3_cpu = run_sb3(seed, config.total_steps)
        sb3_rows.append(row)
        sb3_walls.append(sb3_wall)
        sb3_cpus.append(sb3_cpu)
        print_rows("sb3 zoo DQN", [row], [sb3_wall], [sb3_cpu])
    if args.curves:
        for row in sb3_rows:
            print(f"  curve seed {row['seed']}: " + " ".join(f"{m:.0f}" for m in row["curve"]))
    sb3_first, sb3_final = summary(sb3_rows)
    sb3_wall, sb3_cpu = float(np.mean(sb3_walls)), float(np.mean(sb3_cpus))
    # the machine's speed drifts over minutes: time ours again after SB3 and use the mean of
    # the two timings, which bracket SB3's
    again, wall_after, cpu_after = run_ours(config, args.seeds)
    if [r["curve"] for r in again] != [r["curve"] for r in rows]:
        raise RuntimeError("the second run of ours differs from the first: not deterministic")
    print(
        f"ours again (same results): wall {wall_after:.1f} s, cpu {cpu_after:.1f} s; "
        f"mean of the two runs: wall {(wall + wall_after) / 2:.1f} s, "
        f"cpu {(cpu + cpu_after) / 2:.1f} s"
    )
    wall, cpu = (wall + wall_after) / 2, (cpu + cpu_after) / 2
    print(
        f"sb3: first>=475 in {sb3_first}/{n} seeds, final>=475 in {sb3_final}/{n}; "
        f"per seed (mean of {n}): wall {sb3_wall:.1f} s, cpu {sb3_cpu:.1f} s"
    )
    print("ratios (wall, cpu):")
    print(
        f"  ours per seed in the population / sb3 per seed: {wall / n / sb3_wall:.3f}, "
        f"{cpu / n / sb3_cpu:.3f}"
    )
    if solo_wall is not None and solo_cpu is not None:
        print(
            f"  ours one seed alone / sb3 per seed: {solo_wall / sb3_wall:.3f}, "
            f"{solo_cpu / sb3_cpu:.3f}"
        )
    print(f"  ours {n} seeds together / sb3 one seed: {wall / sb3_wall:.3f}, {cpu / sb3_cpu:.3f}")


if __name__ == "__main__":
    main()
