//! Run-time choice of vector instructions, and the vectorisable `exp` both kernels use.

/// Runs `body` compiled for the widest vector instructions the CPU has (AVX-512, else
/// AVX2 + FMA, else the build's baseline), picked at run time. `body` and what it calls
/// must be `#[inline(always)]` down to the loops, so that they are compiled inside the
/// feature-enabled function.
#[inline(always)]
pub(super) fn vectorised(body: impl FnOnce()) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports the features the function is compiled for.
            unsafe { with_avx512(body) };
            return;
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: as above.
            unsafe { with_avx2(body) };
            return;
        }
    }
    body()
}

/// The instruction sets the hand-written kernels (`dot`, `thin`) have a variant for, each
/// with FMA.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Isa {
    Avx512,
    Avx2,
}

/// The widest of [`Isa`] this CPU runs, which the kernels dispatch to; `None` on CPUs with
/// neither and on other architectures.
pub(super) fn fma_isa() -> Option<Isa> {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("fma") {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return Some(Isa::Avx512);
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            return Some(Isa::Avx2);
        }
    }
    None
}

/// Every one of [`Isa`] this CPU runs, so that a test can check each variant, not only the
/// one the dispatch picks.
#[cfg(all(test, target_arch = "x86_64"))]
pub(super) fn isas() -> Vec<Isa> {
    let fma = std::arch::is_x86_feature_detected!("fma");
    let mut isas = Vec::new();
    if fma && std::arch::is_x86_feature_detected!("avx512f") {
        isas.push(Isa::Avx512);
    }
    if fma && std::arch::is_x86_feature_detected!("avx2") {
        isas.push(Isa::Avx2);
    }
    isas
}

/// Asserts that `got` (`[m, cols.end]` row-major) holds, at every row below `m` and column in
/// `cols`, the float64 value `want(r, c)` within 1e-5 relative (NaN fails), naming `label`.
#[cfg(test)]
pub(super) fn assert_matches_f64(
    label: &str,
    got: &[f32],
    m: usize,
    cols: std::ops::Range<usize>,
    want: impl Fn(usize, usize) -> f64,
) {
    assert_eq!(got.len(), m * cols.end, "{label}");
    for r in 0..m {
        for c in cols.clone() {
            let (g, want) = (f64::from(got[r * cols.end + c]), want(r, c));
            assert!(
                (g - want).abs() <= 1e-5 * (1.0 + want.abs()),
                "{label} [{r},{c}]: {g} vs {want}"
            );
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn with_avx512(body: impl FnOnce()) {
    body()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn with_avx2(body: impl FnOnce()) {
    body()
}

/// `e^x` for `x <= 0` (softmax arguments), branch-free so that it vectorises: Cody-Waite
/// range reduction `x = n ln2 + r`, a degree-6 minimax polynomial for `e^r` on
/// `|r| <= ln2/2` (relative error below 2e-7), and `2^n` built in the exponent bits.
/// Arguments below -87 (including -inf) give exactly 0.
#[inline(always)]
pub(super) fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    let underflow = x < -87.0;
    let xc = x.max(-87.0);
    // Round to nearest with the 1.5 * 2^23 trick: plain adds, which vectorise everywhere.
    const ROUND: f32 = 12_582_912.0;
    let t = xc * LOG2E + ROUND;
    let n = t - ROUND;
    // The same n as an integer, read from t's mantissa (t = 1.5 * 2^23 + n, one unit per
    // ulp): integer arithmetic that vectorises, where `n as i32` (a saturating cast)
    // compiled to one scalar conversion per lane.
    let ni = t.to_bits() as i32 - ROUND.to_bits() as i32;
    let r = xc - n * LN2_HI - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (0.166_666_67 + r * (0.041_666_42 + r * (0.008_333_457 + r * 0.001_398_2)))));
    let scale = f32::from_bits(((ni + 127) as u32) << 23);
    if underflow { 0.0 } else { p * scale }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_accurate_on_softmax_arguments() {
        let mut worst = 0f32;
        for i in 0..=200_000 {
            let x = -87.0 * i as f32 / 200_000.0;
            let (got, want) = (exp(x), x.exp());
            worst = worst.max(((got - want) / want).abs());
        }
        assert!(worst < 5e-7, "max relative error {worst}");
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(-100.0), 0.0);
        assert_eq!(exp(0.0), 1.0);
    }
}
