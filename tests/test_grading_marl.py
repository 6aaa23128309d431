"""Tests for the Lesson 07 checks (course/grading/exercises/marl.py).

Every exercise must accept differently written correct answers (loops, numpy, another dtype
route), reject the classic mistakes written as a student would write them (with the matching
hint), report a stub as "not attempted", and fail cleanly on broken code.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from check_helpers import answer_tests, assert_fails, hint_coverage_test, robustness_tests

from course.grading import exercise_ids
from course.grading.exercises import marl as ex

IDS = ["marl.vdn_td_target", "marl.with_agent_id"]


def test_lesson_registers_its_exercises():
    assert exercise_ids("07_multiagent") == IDS


# --- with_agent_id: right answers written differently -------------------------------------------


def id_eye(obs, agent, n_agents):
    return torch.cat([obs, torch.eye(n_agents, dtype=obs.dtype)[agent]], dim=1)


def id_loop(obs, agent, n_agents):
    out = torch.zeros(obs.shape[0], obs.shape[1] + n_agents, dtype=obs.dtype)
    for b in range(obs.shape[0]):
        out[b, : obs.shape[1]] = obs[b]
        out[b, obs.shape[1] + int(agent[b])] = 1
    return out


def id_scatter(obs, agent, n_agents):
    one_hot = obs.new_zeros(len(agent), n_agents).scatter_(1, agent[:, None], 1.0)
    return torch.hstack([obs, one_hot])


def id_numpy(obs, agent, n_agents):
    x = obs.numpy()
    one_hot = (np.arange(n_agents)[None, :] == agent.numpy()[:, None]).astype(x.dtype)
    return torch.from_numpy(np.concatenate([x, one_hot], axis=1))


# --- with_agent_id: mistakes as students write them ---------------------------------------------


def id_first(obs, agent, n_agents):
    return torch.cat([F.one_hot(agent, n_agents).to(obs.dtype), obs], dim=1)


def id_no_num_classes(obs, agent, n_agents):
    return torch.cat([obs, F.one_hot(agent).to(obs.dtype)], dim=1)


def id_as_number(obs, agent, n_agents):
    return torch.cat([obs, agent.to(obs.dtype).unsqueeze(1)], dim=1)


def id_float(obs, agent, n_agents):
    return torch.cat([obs, F.one_hot(agent, n_agents)], dim=1).float()


def id_one_based(obs, agent, n_agents):
    out = torch.cat([obs, obs.new_zeros(len(agent), n_agents)], dim=1)
    for b, i in enumerate(agent.tolist()):
        out[b, obs.shape[1] + (i + 1) % n_agents] = 1  # counts agents from 1
    return out


def id_in_place(obs, agent, n_agents):
    obs[:] = obs.round()
    return torch.cat([obs, F.one_hot(agent, n_agents).to(obs.dtype)], dim=1)


# --- vdn_td_target: right answers written differently -------------------------------------------


def vdn_loop(team_reward, next_q, terminated, gamma):
    out = team_reward.clone()
    for b in range(len(team_reward)):
        if not terminated[b]:
            out[b] = out[b] + gamma * sum(next_q[b, i].max() for i in range(next_q.shape[1]))
    return out


def vdn_mask(team_reward, next_q, terminated, gamma):
    best = next_q.amax(dim=2).sum(dim=1)
    best = torch.nan_to_num(best) * (~terminated).to(best.dtype)
    return team_reward + gamma * best


def vdn_numpy(team_reward, next_q, terminated, gamma):
    best = np.max(next_q.numpy(), axis=-1).sum(axis=-1)
    return torch.from_numpy(team_reward.numpy() + gamma * np.where(terminated.numpy(), 0, best))


def vdn_per_agent_first(team_reward, next_q, terminated, gamma):
    per_agent = next_q.max(-1).values  # [B, N]
    alive = 1.0 - terminated.to(next_q.dtype)
    return team_reward + gamma * alive * per_agent.sum(-1)


# --- vdn_td_target: mistakes as students write them ---------------------------------------------


def vdn_max_of_sum(team_reward, next_q, terminated, gamma):
    team_q = next_q.sum(dim=1)  # [B, A]
    return team_reward + gamma * ~terminated * team_q.max(dim=1).values


def vdn_no_mask(team_reward, next_q, terminated, gamma):
    return team_reward + gamma * next_q.max(-1).values.sum(-1)


def vdn_inverted(team_reward, next_q, terminated, gamma):
    return team_reward + gamma * terminated * next_q.max(-1).values.sum(-1)


def vdn_truncated_too(team_reward, next_q, terminated, gamma):
    return team_reward.clone()  # "the episode ends here anyway"


def vdn_first_agent(team_reward, next_q, terminated, gamma):
    return team_reward + gamma * ~terminated * next_q[:, 0, :].max(-1).values


def vdn_mean(team_reward, next_q, terminated, gamma):
    return team_reward + gamma * ~terminated * next_q.max(-1).values.mean(-1)


def vdn_dims(team_reward, next_q, terminated, gamma):
    return team_reward + gamma * ~terminated * next_q.max(1).values.sum(1)


def vdn_independent(team_reward, next_q, terminated, gamma):
    return team_reward[:, None] + gamma * (~terminated)[:, None] * next_q.max(-1).values


def vdn_undiscounted(team_reward, next_q, terminated, gamma):
    return team_reward + ~terminated * next_q.max(-1).values.sum(-1)


CORRECT = [
    ("marl.with_agent_id", id_eye),
    ("marl.with_agent_id", id_loop),
    ("marl.with_agent_id", id_scatter),
    ("marl.with_agent_id", id_numpy),
    ("marl.vdn_td_target", vdn_loop),
    ("marl.vdn_td_target", vdn_mask),
    ("marl.vdn_td_target", vdn_numpy),
    ("marl.vdn_td_target", vdn_per_agent_first),
]
WRONG = [
    ("marl.with_agent_id", id_first, ex.PREPENDED),
    ("marl.with_agent_id", id_no_num_classes, ex.SHORT_ONE_HOT),
    ("marl.with_agent_id", id_as_number, ex.RAW_INDEX),
    ("marl.with_agent_id", id_float, ex.FIXED_DTYPE),
    ("marl.with_agent_id", id_one_based, ex.ONE_BASED),
    ("marl.with_agent_id", id_in_place, None),
    ("marl.vdn_td_target", vdn_max_of_sum, ex.MAX_OF_SUM),
    ("marl.vdn_td_target", vdn_no_mask, ex.BOOTSTRAP_TERMINAL),
    ("marl.vdn_td_target", vdn_inverted, ex.INVERTED_MASK),
    ("marl.vdn_td_target", vdn_truncated_too, ex.NO_BOOTSTRAP),
    ("marl.vdn_td_target", vdn_first_agent, ex.ONE_AGENT),
    ("marl.vdn_td_target", vdn_mean, ex.MEAN_OVER_AGENTS),
    ("marl.vdn_td_target", vdn_dims, ex.WRONG_DIMS),
    ("marl.vdn_td_target", vdn_independent, ex.PER_AGENT),
    ("marl.vdn_td_target", vdn_undiscounted, ex.NO_GAMMA),
]

(
    test_correct_answers_pass,
    test_correct_answers_pass_with_other_seeds,
    test_student_mistakes_fail,
    test_every_listed_mistake_fails_with_its_hint,
) = answer_tests(IDS, CORRECT, WRONG)
test_every_listed_hint_is_reached_by_a_student_written_mistake = hint_coverage_test(IDS, WRONG)


def test_changing_obs_in_place_is_reported():
    result = assert_fails("marl.with_agent_id", id_in_place)
    assert "in place" in result.message


def test_max_of_sum_failure_shows_the_square_batch():
    result = assert_fails("marl.vdn_td_target", vdn_max_of_sum)
    assert "square batch" in result.message and "next_q [B, N, A]" in result.message


def test_float64_is_required_to_stay_float64():
    result = assert_fails("marl.with_agent_id", id_float)
    assert "dtype float32; expected float64" in result.message


# --- not attempted, broken code, speed ----------------------------------------------------------


(
    test_reference_passes,
    test_library_object_itself_is_refused,
    test_stub_is_not_attempted,
    test_missing_answer_is_not_attempted,
    test_broken_code_fails_without_crashing,
    test_a_check_runs_in_well_under_a_second,
) = robustness_tests(IDS, CORRECT, WRONG)
