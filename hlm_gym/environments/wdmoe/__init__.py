"""The WDMoE family (``hlm_gym/WDMoE-v0``): experts of a mixture-of-experts on wireless devices.

==================  ==========================================================================
module              holds
==================  ==========================================================================
``config``          :class:`WDMoEConfig`: every option and its default, validated in one place
``observation``     the observation layout (names, bounds) for ``E`` experts
``simulation``      what envs of the same options share: fleet, channel bank as per-expert
                    call times and energies, trace tables, reference latency
``kernel``          :class:`WDMoEKernel`: the ONE step (selection, latency, energy, quality
                    loss, reward, observation) on numpy or torch
``env``             the Gymnasium env (single): the kernel on a batch of one
``vector``          the numpy and torch batched envs
==================  ==========================================================================
"""
