"""The HybridLM family (``hlm_gym/HybridLM-v0``, ``hlm_gym/HybridLMCompressed-v0``).

==================  ==========================================================================
module              holds
==================  ==========================================================================
``config``          :class:`EnvConfig`: every option and its default, validated in one place
``observation``     the observation layout and its one builder (``write_observation``)
``simulation``      what envs of the same options share: scenario, trace tables, channel bank,
                    cost model, reference latency; :class:`EpisodeDraw` (episode starts)
``kernel``          :class:`HybridLMKernel`: the ONE step (cost, reward, replay, skip window,
                    observation) on an array backend
``env``             the Gymnasium env (single; trace or live mode): the kernel on Python scalars
``vector``          the numpy batched env (``gym.make_vec(..., "vector_entry_point")``)
``torch_vector``    the same batched env on torch tensors (CPU or GPU)
``sb3``             the Stable-Baselines3 ``VecEnv`` adapter of the batched envs
==================  ==========================================================================
"""
