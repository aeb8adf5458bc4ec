"""Statistical tests of the channel: large scale, fading statistics, time-based state, rates."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import special, stats

from hlm_gym.wireless.channel import Channel, make_channel
from hlm_gym.wireless.fading import BlockFading, SumOfSinusoidsFading, TableFading
from hlm_gym.wireless.propagation import mean_snr_db_from_budget, noise_power_dbm, pathloss_db
from hlm_gym.wireless.rate import RateModel, mcs_spectral_efficiency, shannon_rate_bps
from hlm_gym.wireless.scenarios import load_scenario

# Tolerances are several standard errors of the estimate they bound (seeded, so deterministic).
Z = 5.0


def jakes(speed_kmh: float = 30.0, **extra: object):
    """A Rayleigh Jakes scenario with a given mean SNR and no shadowing."""
    over = {"fading.model": "jakes", "fading.distribution": "rayleigh", "fading.k_factor": 0.0,
            "fading.speed_kmh": speed_kmh, "link.mean_snr_db": 10.0, "link.shadowing_std_db": 0.0,
            "link.shadowing_decorrelation_m": None}
    over.update(extra)
    return load_scenario("pedestrian", **over)


# ------------------------------------------------------------------------------ large scale
def test_mean_snr_matches_configuration() -> None:
    sc = jakes(60.0, **{"link.mean_snr_db": 7.0})
    n, steps = 2000, 10
    ch = make_channel(sc, n, np.random.default_rng(0))
    spacing = 5.0 / sc.doppler_hz  # J0(2 pi 5) ~ 0.1: nearly independent samples
    acc = []
    for _ in range(steps):
        ch.advance(spacing)
        acc.append(ch.snr_linear())
    ratio = np.asarray(acc) / 10 ** 0.7  # = |h|^2, mean 1, variance ~1
    se = ratio.std() / math.sqrt(n * steps)
    assert abs(ratio.mean() - 1.0) < Z * se * 1.5  # 1.5: residual correlation between steps
    assert np.allclose(ch.mean_snr_db(), 7.0)


def test_link_budget_and_log_distance() -> None:
    sc = load_scenario({"link": {"distance_m": 50.0, "bandwidth_hz": 10e6, "tx_power_dbm": 20.0,
                                 "noise_figure_db": 7.0, "antenna_gain_db": 3.0,
                                 "pathloss": {"model": "log-distance", "ref_loss_db": 40.0, "exponent": 3.2}},
                        "fading": {"model": "none"}})
    expected = 20.0 + 3.0 - (40.0 + 32.0 * math.log10(50.0)) - (-174.0 + 70.0 + 7.0)
    ch = make_channel(sc, 3, np.random.default_rng(0))
    assert np.allclose(ch.snr_db(), expected)
    assert sc.nominal_mean_snr_db == pytest.approx(expected)
    # free-space reference loss at 1 m when ref_loss_db is unset
    fs = pathloss_db("log-distance", np.array([1.0]), 3.5e9, exponent=2.0)[0]
    assert fs == pytest.approx(20 * math.log10(4 * math.pi * 3.5e9 / 299_792_458.0))
    assert noise_power_dbm(-174.0, 1e6, 0.0) == pytest.approx(-114.0)


def test_3gpp_pathloss_structure() -> None:
    d = np.array([20.0, 100.0, 400.0, 1500.0])
    umi_los = pathloss_db("umi-los", d, 3.5e9)
    umi_nlos = pathloss_db("umi-nlos", d, 3.5e9)
    uma_nlos = pathloss_db("uma-nlos", d, 3.5e9, h_bs_m=25.0)
    assert np.all(np.diff(umi_los) > 0) and np.all(umi_nlos >= umi_los) and np.all(np.diff(uma_nlos) > 0)
    # below the breakpoint, UMi LOS is 32.4 + 21 log10(d3D) + 20 log10(fc/GHz) (TR 38.901 Table 7.4.1-1)
    d3 = math.hypot(20.0, 8.5)
    assert umi_los[0] == pytest.approx(32.4 + 21 * math.log10(d3) + 20 * math.log10(3.5))
    # continuity at the breakpoint d'_BP = 4 h'_BS h'_UT f_c / c
    dbp = 4 * 9.0 * 0.5 * 3.5e9 / 299_792_458.0
    lo, hi = pathloss_db("umi-los", np.array([dbp - 1e-6, dbp + 1e-6]), 3.5e9)
    assert abs(hi - lo) < 0.05


def test_shadowing_std_and_distance_range() -> None:
    sc = load_scenario("static-cell-edge", **{"link.shadowing_std_db": 6.0, "link.distance_max_m": 400.0})
    n = 4000
    ch = make_channel(sc, n, np.random.default_rng(3))
    pl_mean = mean_snr_db_from_budget(sc.link, np.array([250.0, 400.0]))
    snr = ch.snr_db()
    assert np.all(snr < pl_mean[0] + 6 * 6) and np.all(snr > pl_mean[1] - 6 * 6)
    sc0 = load_scenario("static-cell-edge", **{"link.shadowing_std_db": 6.0})
    s = make_channel(sc0, n, np.random.default_rng(4)).snr_db() - sc0.nominal_mean_snr_db
    assert abs(s.mean()) < Z * 6.0 / math.sqrt(n)
    assert abs(s.std() - 6.0) < Z * 6.0 / math.sqrt(2 * n)


def test_correlated_shadowing_autocorrelation() -> None:
    sc = load_scenario("vehicular")  # sigma 6 dB, d_corr 50 m, 60 km/h
    n = 3000
    ch = make_channel(sc, n, np.random.default_rng(5))
    s0 = ch.mean_snr_db() - sc.nominal_mean_snr_db
    assert abs(s0.std() - 6.0) < 0.6  # sum of 8 sinusoids: near-Gaussian marginal
    v = sc.speed_mps
    for dist in (10.0, 50.0):
        ch2 = make_channel(sc, n, np.random.default_rng(5))
        ch2.advance(dist / v)
        s1 = ch2.mean_snr_db() - sc.nominal_mean_snr_db
        rho = np.mean(s0 * s1) / 36.0
        assert abs(rho - math.exp(-dist / 50.0)) < Z / math.sqrt(n) + 0.03


# ------------------------------------------------------------------------------ fading statistics
def test_rayleigh_power_is_exponential_mean_one() -> None:
    sc = jakes(30.0)
    n = 3000
    ch = make_channel(sc, n, np.random.default_rng(7))
    samples = [ch.fading_power()]
    ch.advance(50.0 / sc.doppler_hz)
    samples.append(ch.fading_power())
    g = np.concatenate(samples)
    assert abs(g.mean() - 1.0) < Z / math.sqrt(len(g))
    assert stats.kstest(g, "expon").pvalue > 1e-3


@pytest.mark.parametrize("k", [2.0, 7.943])
def test_rician_matches_k_factor(k: float) -> None:
    sc = jakes(30.0, **{"fading.distribution": "rician", "fading.k_factor": k})
    n = 4000
    ch = make_channel(sc, n, np.random.default_rng(11))
    g = ch.fading_power()
    # moment-based K estimate (Greenstein et al. 1999): K = sqrt(Ga^2 - Gv^2) / (Ga - sqrt(Ga^2 - Gv^2))
    ga, gv = g.mean(), g.std()
    root = math.sqrt(max(ga ** 2 - gv ** 2, 0.0))
    k_hat = root / (ga - root)
    assert abs(ga - 1.0) < Z * gv / math.sqrt(n)
    assert abs(k_hat - k) / k < 0.2
    # |h| ~ Rice(nu = sqrt(K/(K+1)), sigma^2 = 1/(2(K+1))): scipy's rice(b = nu/sigma, scale = sigma)
    sigma = math.sqrt(1.0 / (2.0 * (k + 1.0)))
    b = math.sqrt(k / (k + 1.0)) / sigma
    assert stats.kstest(np.sqrt(g), "rice", args=(b, 0.0, sigma)).pvalue > 1e-3


def test_autocorrelation_follows_bessel_j0() -> None:
    sc = jakes(30.0)
    fd = sc.doppler_hz
    n = 4000
    ch = make_channel(sc, n, np.random.default_rng(13))
    h0 = ch.fading_gain()
    args = np.array([0.5, 1.5, 2.4, 3.8, 5.5, 7.0])
    for x in args:
        tau = x / (2 * math.pi * fd)
        c = make_channel(sc, n, np.random.default_rng(13))
        c.advance(tau)
        r = np.mean(c.fading_gain() * np.conj(h0))
        assert abs(r.real - special.j0(x)) < Z / math.sqrt(n), (x, r, special.j0(x))
        assert abs(r.imag) < Z / math.sqrt(n)


def test_block_fading_statistics() -> None:
    sc = load_scenario("static-good", **{"fading.model": "block", "fading.coherence_time_s": 0.01})
    n = 4000
    ch = make_channel(sc, n, np.random.default_rng(17))
    h0 = ch.fading_gain()
    assert stats.kstest(np.abs(h0) ** 2, "expon").pvalue > 1e-3
    for tau in (0.0025, 0.005, 0.02):
        c = make_channel(sc, n, np.random.default_rng(17))
        c.advance(tau)
        r = np.mean(c.fading_gain() * np.conj(h0)).real
        assert abs(r - max(0.0, 1.0 - tau / 0.01)) < Z / math.sqrt(n)


def test_no_fading_is_static() -> None:
    sc = load_scenario("static-good")
    ch = make_channel(sc, 8, np.random.default_rng(0))
    s0 = ch.snr_db()
    ch.advance(12.3)
    assert np.allclose(ch.fading_power(), 1.0) and np.allclose(ch.snr_db(), s0)


# ------------------------------------------------------------------------------ time, seeds, batches
@pytest.mark.parametrize("name,extra", [
    ("pedestrian", {}),
    ("vehicular", {}),
    ("static-good", {"fading.model": "block", "fading.coherence_time_s": 0.004}),
])
def test_state_advances_with_time_not_calls(name: str, extra: dict) -> None:
    sc = load_scenario(name, **extra)
    a = make_channel(sc, 64, np.random.default_rng(21))
    b = make_channel(sc, 64, np.random.default_rng(21))
    dt = np.random.default_rng(1).uniform(0.0, 0.2, 64)
    a.advance(dt)
    for _ in range(7):
        b.advance(dt / 7)
    assert np.allclose(a.time_s, b.time_s)
    assert np.allclose(a.snr_db(), b.snr_db(), atol=1e-4)


def test_same_seed_same_sequence_and_seeds_differ() -> None:
    sc = load_scenario("vehicular")
    runs = []
    for seed in (5, 5, 6):
        ch = make_channel(sc, 32, np.random.default_rng(seed))
        seq = []
        for _ in range(5):
            ch.advance(0.013)
            seq.append(ch.snr_db())
        runs.append(np.array(seq))
    assert np.array_equal(runs[0], runs[1])
    assert not np.allclose(runs[0], runs[2])


def test_links_in_a_batch_are_uncorrelated() -> None:
    sc = jakes(30.0)
    fd = sc.doppler_hz
    n, steps = 200, 400
    ch = make_channel(sc, n, np.random.default_rng(23))
    g = np.empty((steps, n))
    for i in range(steps):
        ch.advance(1.0 / fd)
        g[i] = ch.fading_power()
    a, b = g[:, 0::2], g[:, 1::2]
    a = (a - a.mean(0)) / a.std(0)
    b = (b - b.mean(0)) / b.std(0)
    rho = (a * b).mean(0)  # correlation of pairs of links over time
    # time samples 1/f_D apart are weakly correlated: allow ~3x the i.i.d. standard error
    assert abs(rho.mean()) < Z * 3 / math.sqrt(steps * n / 2)
    assert np.abs(rho).max() < 0.35


def test_reset_subset_leaves_others_untouched() -> None:
    sc = load_scenario("vehicular")
    ch = make_channel(sc, 16, np.random.default_rng(0))
    ch.advance(np.linspace(0.01, 0.2, 16))
    before_snr, before_t = ch.snr_db(), ch.time_s
    mask = np.zeros(16, dtype=bool)
    mask[[1, 5, 9]] = True
    ch.reset(np.random.default_rng(99), mask=mask)
    after = ch.snr_db()
    assert np.array_equal(after[~mask], before_snr[~mask])
    assert np.array_equal(ch.time_s[~mask], before_t[~mask])
    assert np.all(ch.time_s[mask] == 0.0)
    assert not np.allclose(after[mask], before_snr[mask])
    ch.advance(0.05)  # untouched links keep evolving on their own clock
    ref = make_channel(sc, 16, np.random.default_rng(0))
    ref.advance(np.linspace(0.01, 0.2, 16) + 0.05)
    assert np.allclose(ch.snr_db()[~mask], ref.snr_db()[~mask], atol=1e-4)


def test_advance_rejects_negative_and_bad_shape() -> None:
    ch = make_channel(load_scenario("pedestrian"), 4, np.random.default_rng(0))
    with pytest.raises(ValueError):
        ch.advance(-0.1)
    with pytest.raises(ValueError):
        ch.advance(np.ones(3))


def test_trace_matches_advance() -> None:
    sc = load_scenario("pedestrian")
    ch = make_channel(sc, 2, np.random.default_rng(2))
    times = np.array([0.0, 0.05, 0.4])
    tr = ch.trace_db(times, link=1)
    for t in times:
        c = make_channel(sc, 2, np.random.default_rng(2))
        c.advance(t)
        assert c.snr_db()[1] == pytest.approx(tr[list(times).index(t)], abs=1e-4)


def test_grid_and_chunked_evaluation_match_advance() -> None:
    sc = load_scenario("vehicular")
    ch = make_channel(sc, 3, np.random.default_rng(8))
    ch.advance(0.01)
    offs = np.array([0.0, 0.004, 0.5, 2.0])
    grid = ch.snr_db_grid(offs)
    assert grid.shape == (3, 4)
    assert np.allclose(grid[:, 0], ch.snr_db())
    idx = np.repeat(np.arange(3), 4)
    old = Channel._EVAL_CHUNK
    try:
        Channel._EVAL_CHUNK = 5  # force chunking
        flat = ch.snr_db_at(np.tile(offs, 3), idx)
    finally:
        Channel._EVAL_CHUNK = old
    assert np.allclose(flat.reshape(3, 4), grid)
    ref = make_channel(sc, 3, np.random.default_rng(8))
    ref.advance(0.01 + 2.0)
    assert np.allclose(ref.snr_db(), grid[:, 3], atol=1e-4)


def test_downlink_offset_and_shared_fading() -> None:
    sc = load_scenario("vehicular")
    ch = make_channel(sc, 8, np.random.default_rng(1))
    ch.advance(0.02)
    assert np.allclose(ch.downlink_snr_db() - ch.snr_db(), sc.downlink_offset_db)
    assert sc.downlink_offset_db == pytest.approx((46.0 - 23.0) - (9.0 - 5.0))
    ind = make_channel(load_scenario("vehicular", **{"downlink.fading": "independent"}), 2000, np.random.default_rng(1))
    d = ind.downlink_snr_db() - ind.snr_db()
    assert np.std(d) > 3.0  # independent fading decorrelates the two directions


# ------------------------------------------------------------------------------ rates and outage
def test_shannon_rate_with_gap() -> None:
    snr = np.array([0.0, 1.0, 15.0])
    assert np.allclose(shannon_rate_bps(snr, 1e6), 1e6 * np.log2(1 + snr))
    gap = 10 ** 0.3
    assert np.allclose(shannon_rate_bps(snr, 2e6, gap_db=3.0), 2e6 * np.log2(1 + snr / gap))
    assert np.allclose(shannon_rate_bps(np.array([1e6]), 1.0, max_spectral_efficiency=6.0), 6.0)


def test_mcs_outage_gives_rate_zero_and_upload_waits() -> None:
    table = [(-5.0, 0.2), (0.0, 1.0), (10.0, 3.0)]
    assert np.allclose(mcs_spectral_efficiency(np.array([-9.0, -5.0, 3.0, 25.0]), table), [0.0, 0.2, 1.0, 3.0])
    sc = load_scenario("static-cell-edge", **{"rate.model": "mcs", "rate.mcs_table": [list(r) for r in table],
                                              "rate.max_wait_slots": 40, "link.mean_snr_db": -8.0})
    ch = make_channel(sc, 4, np.random.default_rng(0))
    assert np.all(ch.uplink_rate_bps() == 0.0)
    tr = ch.uplink_transfer(np.full(4, 1e5))
    # static channel in outage: waits the cap, then sends at the outage-threshold rate
    assert np.allclose(tr.wait_s, 40 * sc.rate.slot_s)
    assert np.allclose(tr.airtime_s, 1e5 / (0.2 * sc.link.bandwidth_hz))
    assert RateModel(sc.rate).fallback_rate_bps(1e6) == pytest.approx(0.2e6)


def test_outage_wait_ends_when_channel_recovers() -> None:
    sc = load_scenario("cell-edge-fast-fading", **{"rate.airtime": "start"})
    n = 3000
    ch = make_channel(sc, n, np.random.default_rng(4))
    r0 = ch.uplink_rate_bps()
    out = r0 == 0
    p_out = 1 - math.exp(-10 ** (-0.67))  # Rayleigh at 0 dB mean below -6.7 dB
    assert abs(out.mean() - p_out) < Z * math.sqrt(p_out * (1 - p_out) / n)
    tr = ch.uplink_transfer(np.full(n, 1e5))
    assert np.all(tr.wait_s[~out] == 0) and np.all(tr.wait_s[out] > 0)
    slot = sc.rate.slot_s
    k = np.rint(tr.wait_s[out] / slot).astype(int)
    idx = np.flatnonzero(out)
    # the rate is zero during the wait and positive when the upload starts
    after = ch.snr_db_at(tr.wait_s[out], idx=idx)
    assert np.all(after >= -6.7 - 1e-9)
    before = ch.snr_db_at((k - 1) * slot, idx=idx)
    assert np.all(before < -6.7)


def test_integrated_airtime() -> None:
    static = load_scenario("static-cell-edge", **{"rate.airtime": "integrate"})
    ch = make_channel(static, 5, np.random.default_rng(0))
    bits = np.array([0.0, 1e3, 1e5, 7.36e5, 3e6])
    tr = ch.uplink_transfer(bits)
    assert np.allclose(tr.airtime_s, bits / ch.uplink_rate_bps()) and np.all(tr.wait_s == 0)
    sc = load_scenario("cell-edge-fast-fading")
    n = 400
    fch = make_channel(sc, n, np.random.default_rng(1))
    tr = fch.uplink_transfer(np.full(n, 7.36e5))
    # many coherence times per upload: wait + airtime ~ bits / E[rate] (ergodic, outage slots
    # included), and the share of waiting slots ~ the outage probability
    g = np.random.default_rng(0).exponential(size=200_000)
    mean_rate = RateModel(sc.rate).rate_bps(g, sc.link.bandwidth_hz).mean()
    assert np.median(tr.airtime_s + tr.wait_s) == pytest.approx(7.36e5 / mean_rate, rel=0.1)
    p_out = 1 - math.exp(-10 ** (-0.67))
    frac_wait = tr.wait_s.sum() / (tr.wait_s.sum() + tr.airtime_s.sum())
    assert frac_wait == pytest.approx(p_out, abs=0.05)


# ------------------------------------------------------------------------------ process classes
def test_processes_accept_subsets_and_repeats() -> None:
    rng = np.random.default_rng(0)
    for proc in (SumOfSinusoidsFading(6, 50.0, 3.0), BlockFading(6, 0.01, 1.0),
                 TableFading(6, rng.exponential(size=(3, 100)), 1e-3)):
        proc.reset(rng)
        t = np.linspace(0, 0.05, 6)
        full = proc.power(t)
        idx = np.array([4, 4, 1])
        assert np.allclose(proc.power(t[idx], idx), full[idx])
        grid = proc.power_grid(t[idx], np.array([0.0, 0.01]), idx)
        assert np.allclose(grid[:, 0], full[idx])


def test_channel_direct_construction_and_size() -> None:
    sc = load_scenario("pedestrian")
    ch = Channel(sc, 3, np.random.default_rng(0))
    assert ch.snr_db().shape == (3,) and ch.uplink_rate_bps().shape == (3,) and ch.downlink_rate_bps().shape == (3,)
    with pytest.raises(ValueError):
        Channel(sc, 0, np.random.default_rng(0))


# ------------------------------------------------------------------------------ Sionna cross-check
def test_sionna_tdl_agrees_with_builtin_jakes() -> None:
    pytest.importorskip("sionna.phy")
    over = {"fading.speed_kmh": 3.6, "fading.sionna.sample_period_s": 0.01,
            "fading.sionna.duration_s": 20.0, "fading.sionna.n_realisations": 32}
    sc = load_scenario("pedestrian-tdl-a", **over)  # TDL-A, 1 m/s, 3.5 GHz, 10 ms steps
    from hlm_gym.wireless.fading import sionna_tdl_power_table

    table, ts = sionna_tdl_power_table(sc.fading.sionna, sc.link.carrier_hz, sc.speed_mps)
    again, _ = sionna_tdl_power_table(sc.fading.sionna, sc.link.carrier_hz, sc.speed_mps)
    assert np.array_equal(table, again)
    fd = sc.doppler_hz
    jk = jakes(3.6)
    n_j, steps = 256, 400
    ch = make_channel(jk, n_j, np.random.default_rng(0))
    gj = np.empty((steps, n_j))
    for i in range(steps):
        gj[i] = ch.fading_power()
        ch.advance(ts)
    gs = table.astype(float)
    # effective independent samples: ~ realisations x duration x f_D (correlation time ~ 1/f_D)
    n_eff = gs.shape[0] * gs.shape[1] * ts * fd
    assert abs(gs.mean() - 1.0) < Z / math.sqrt(n_eff)
    assert abs(gj.mean() - 1.0) < Z / math.sqrt(n_j * steps * ts * fd)
    for lag in (1, 2, 3, 5):
        theory = special.j0(2 * math.pi * fd * lag * ts) ** 2  # power autocorrelation of Rayleigh
        rs = np.corrcoef(gs[:, :-lag].ravel(), gs[:, lag:].ravel())[0, 1]
        rj = np.corrcoef(gj[:-lag].ravel(), gj[lag:].ravel())[0, 1]
        assert abs(rs - theory) < 0.08 and abs(rj - theory) < 0.08 and abs(rs - rj) < 0.1, (lag, rs, rj, theory)
    # the channel indexes the table by elapsed time
    ch_s = make_channel(sc, 4, np.random.default_rng(1))
    ch_s.advance(0.123)
    assert ch_s.snr_db().shape == (4,) and np.all(np.isfinite(ch_s.snr_db()))
