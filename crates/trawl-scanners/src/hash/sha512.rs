//! SHA-512 (FIPS 180-4), a digest the hash worker computes on request.
//!
//! Its rounds keep the integer units busy, so the fast way is OpenSSL's:
//! compute the message schedule in vector registers, two blocks at a time,
//! beside the rounds, and rotate with BMI2's `rorx`. ring does that only on
//! CPUs that name themselves Intel and runs plain code elsewhere (0.7× of
//! OpenSSL on the bench machine's AMD EPYC). This module does it on any
//! x86-64 CPU with AVX2 and BMI2 (0.88–0.90× there); other CPUs get ring.

use super::blocks::Blocks;

const INIT: [u64; 8] = [
    0x6a09_e667_f3bc_c908,
    0xbb67_ae85_84ca_a73b,
    0x3c6e_f372_fe94_f82b,
    0xa54f_f53a_5f1d_36f1,
    0x510e_527f_ade6_82d1,
    0x9b05_688c_2b3e_6c1f,
    0x1f83_d9ab_fb41_bd6b,
    0x5be0_cd19_137e_2179,
];

/// An SHA-512 digest fed in pieces.
pub(crate) struct Sha512(Engine);

enum Engine {
    #[cfg(target_arch = "x86_64")]
    Vector {
        cpu: vector::Avx2,
        state: [u64; 8],
        blocks: Blocks<128>,
    },
    Ring(ring::digest::Context),
}

impl Sha512 {
    pub fn new() -> Self {
        #[cfg(target_arch = "x86_64")]
        if let Some(cpu) = vector::Avx2::detect() {
            return Self::vector(cpu);
        }
        Self::ring()
    }

    #[cfg(target_arch = "x86_64")]
    fn vector(cpu: vector::Avx2) -> Self {
        Sha512(Engine::Vector {
            cpu,
            state: INIT,
            blocks: Blocks::new(),
        })
    }

    fn ring() -> Self {
        Sha512(Engine::Ring(ring::digest::Context::new(
            &ring::digest::SHA512,
        )))
    }

    pub fn update(&mut self, data: &[u8]) {
        match &mut self.0 {
            #[cfg(target_arch = "x86_64")]
            Engine::Vector { cpu, state, blocks } => {
                blocks.update(data, |b| cpu.compress(state, b));
            }
            Engine::Ring(context) => context.update(data),
        }
    }

    pub fn finalize(self) -> [u8; 64] {
        let mut out = [0u8; 64];
        match self.0 {
            #[cfg(target_arch = "x86_64")]
            Engine::Vector {
                cpu,
                mut state,
                blocks,
            } => {
                let bits = u128::from(blocks.total()) * 8;
                blocks.finish(&bits.to_be_bytes(), |b| cpu.compress(&mut state, b));
                for (o, word) in out.chunks_exact_mut(8).zip(state) {
                    o.copy_from_slice(&word.to_be_bytes());
                }
            }
            Engine::Ring(context) => out.copy_from_slice(context.finish().as_ref()),
        }
        out
    }
}

#[cfg(target_arch = "x86_64")]
mod vector {
    use std::arch::x86_64::*;

    /// FIPS 180-4 section 4.2.3.
    const K: [u64; 80] = [
        0x428a_2f98_d728_ae22,
        0x7137_4491_23ef_65cd,
        0xb5c0_fbcf_ec4d_3b2f,
        0xe9b5_dba5_8189_dbbc,
        0x3956_c25b_f348_b538,
        0x59f1_11f1_b605_d019,
        0x923f_82a4_af19_4f9b,
        0xab1c_5ed5_da6d_8118,
        0xd807_aa98_a303_0242,
        0x1283_5b01_4570_6fbe,
        0x2431_85be_4ee4_b28c,
        0x550c_7dc3_d5ff_b4e2,
        0x72be_5d74_f27b_896f,
        0x80de_b1fe_3b16_96b1,
        0x9bdc_06a7_25c7_1235,
        0xc19b_f174_cf69_2694,
        0xe49b_69c1_9ef1_4ad2,
        0xefbe_4786_384f_25e3,
        0x0fc1_9dc6_8b8c_d5b5,
        0x240c_a1cc_77ac_9c65,
        0x2de9_2c6f_592b_0275,
        0x4a74_84aa_6ea6_e483,
        0x5cb0_a9dc_bd41_fbd4,
        0x76f9_88da_8311_53b5,
        0x983e_5152_ee66_dfab,
        0xa831_c66d_2db4_3210,
        0xb003_27c8_98fb_213f,
        0xbf59_7fc7_beef_0ee4,
        0xc6e0_0bf3_3da8_8fc2,
        0xd5a7_9147_930a_a725,
        0x06ca_6351_e003_826f,
        0x1429_2967_0a0e_6e70,
        0x27b7_0a85_46d2_2ffc,
        0x2e1b_2138_5c26_c926,
        0x4d2c_6dfc_5ac4_2aed,
        0x5338_0d13_9d95_b3df,
        0x650a_7354_8baf_63de,
        0x766a_0abb_3c77_b2a8,
        0x81c2_c92e_47ed_aee6,
        0x9272_2c85_1482_353b,
        0xa2bf_e8a1_4cf1_0364,
        0xa81a_664b_bc42_3001,
        0xc24b_8b70_d0f8_9791,
        0xc76c_51a3_0654_be30,
        0xd192_e819_d6ef_5218,
        0xd699_0624_5565_a910,
        0xf40e_3585_5771_202a,
        0x106a_a070_32bb_d1b8,
        0x19a4_c116_b8d2_d0c8,
        0x1e37_6c08_5141_ab53,
        0x2748_774c_df8e_eb99,
        0x34b0_bcb5_e19b_48a8,
        0x391c_0cb3_c5c9_5a63,
        0x4ed8_aa4a_e341_8acb,
        0x5b9c_ca4f_7763_e373,
        0x682e_6ff3_d6b2_b8a3,
        0x748f_82ee_5def_b2fc,
        0x78a5_636f_4317_2f60,
        0x84c8_7814_a1f0_ab72,
        0x8cc7_0208_1a64_39ec,
        0x90be_fffa_2363_1e28,
        0xa450_6ceb_de82_bde9,
        0xbef9_a3f7_b2c6_7915,
        0xc671_78f2_e372_532b,
        0xca27_3ece_ea26_619c,
        0xd186_b8c7_21c0_c207,
        0xeada_7dd6_cde0_eb1e,
        0xf57d_4f7f_ee6e_d178,
        0x06f0_67aa_7217_6fba,
        0x0a63_7dc5_a2c8_98a6,
        0x113f_9804_bef9_0dae,
        0x1b71_0b35_131c_471b,
        0x28db_77f5_2304_7d84,
        0x32ca_ab7b_40c7_2493,
        0x3c9e_be0a_15c9_bebc,
        0x431d_67c4_9c10_0d4c,
        0x4cc5_d4be_cb3e_42b6,
        0x597f_299c_fc65_7e2a,
        0x5fcb_6fab_3ad6_faec,
        0x6c44_198c_4a47_5817,
    ];

    /// Proof that this CPU has AVX2, BMI1 (`andn`) and BMI2 (`rorx`).
    #[derive(Clone, Copy)]
    pub(super) struct Avx2(());

    impl Avx2 {
        pub fn detect() -> Option<Self> {
            (is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("bmi1")
                && is_x86_feature_detected!("bmi2"))
            .then_some(Avx2(()))
        }

        pub fn compress(self, state: &mut [u64; 8], blocks: &[[u8; 128]]) {
            // SAFETY: an `Avx2` exists only where the CPU has the features.
            unsafe { compress(state, blocks) }
        }
    }

    /// `W[t] + K[t]` for the 80 rounds of two blocks, as the schedule
    /// stores them: for each pair of rounds `2p, 2p+1`, the first block's
    /// two words, then the second block's.
    #[repr(align(32))]
    struct Scheduled([u64; 160]);

    /// `K[t], K[t+1]` in both halves.
    #[target_feature(enable = "avx2")]
    fn k(t: usize) -> __m256i {
        let pair: [u64; 2] = [K[t], K[t + 1]];
        // SAFETY: reads the 16 bytes of `pair`; unaligned loads are allowed.
        _mm256_broadcastsi128_si256(unsafe { _mm_loadu_si128(pair.as_ptr().cast()) })
    }

    /// The next two schedule words of each block from the sixteen before
    /// them, `x[j]` holding words `2j, 2j+1` of the window:
    /// `W[t] = σ1(W[t-2]) + W[t-7] + σ0(W[t-15]) + W[t-16]`.
    #[target_feature(enable = "avx2")]
    fn next_words(x0: __m256i, x1: __m256i, x4: __m256i, x5: __m256i, x7: __m256i) -> __m256i {
        let w15 = _mm256_alignr_epi8::<8>(x1, x0);
        let w7 = _mm256_alignr_epi8::<8>(x5, x4);
        // A rotation by a whole byte is one shuffle.
        let by_a_byte = _mm256_setr_epi8(
            1, 2, 3, 4, 5, 6, 7, 0, 9, 10, 11, 12, 13, 14, 15, 8, 1, 2, 3, 4, 5, 6, 7, 0, 9, 10,
            11, 12, 13, 14, 15, 8,
        );
        let sigma0 = _mm256_xor_si256(
            _mm256_xor_si256(_mm256_srli_epi64::<1>(w15), _mm256_slli_epi64::<63>(w15)),
            _mm256_xor_si256(
                _mm256_srli_epi64::<7>(w15),
                _mm256_shuffle_epi8(w15, by_a_byte),
            ),
        );
        let sigma1 = _mm256_xor_si256(
            _mm256_xor_si256(
                _mm256_xor_si256(_mm256_srli_epi64::<19>(x7), _mm256_slli_epi64::<45>(x7)),
                _mm256_xor_si256(_mm256_srli_epi64::<61>(x7), _mm256_slli_epi64::<3>(x7)),
            ),
            _mm256_srli_epi64::<6>(x7),
        );
        _mm256_add_epi64(_mm256_add_epi64(x0, sigma0), _mm256_add_epi64(w7, sigma1))
    }

    /// One round; the caller renames the eight words instead of moving them.
    macro_rules! round {
        ($a:ident, $b:ident, $c:ident, $d:ident, $e:ident, $f:ident, $g:ident, $h:ident, $wk:expr) => {
            let t1 = $h
                .wrapping_add($wk)
                .wrapping_add($e.rotate_right(14) ^ $e.rotate_right(18) ^ $e.rotate_right(41))
                .wrapping_add(($e & $f) ^ (!$e & $g));
            let t2 = ($a.rotate_right(28) ^ $a.rotate_right(34) ^ $a.rotate_right(39))
                .wrapping_add((($a ^ $b) & ($b ^ $c)) ^ $b);
            $d = $d.wrapping_add(t1);
            $h = t1.wrapping_add(t2);
        };
    }

    /// Sixteen rounds from round `$t` of block `$block` (0 or 1), running
    /// `$then!(j)` after rounds `$t + 2j` and `$t + 2j + 1`.
    macro_rules! sixteen {
        ([$a:ident, $b:ident, $c:ident, $d:ident, $e:ident, $f:ident, $g:ident, $h:ident],
         $scheduled:ident, $t:expr, $block:expr, $then:ident) => {
            // Volatile: read in round order, each after the store that
            // wrote it, so the compiler keeps the schedule's vector work
            // beside the rounds instead of hoisting it all in front.
            let wk = |i: usize| {
                let t = $t + i;
                // SAFETY: `t < 80`, so the index is below 160.
                unsafe { $scheduled.add(2 * t - t % 2 + 2 * $block).read_volatile() }
            };
            round!($a, $b, $c, $d, $e, $f, $g, $h, wk(0));
            round!($h, $a, $b, $c, $d, $e, $f, $g, wk(1));
            $then!(0);
            round!($g, $h, $a, $b, $c, $d, $e, $f, wk(2));
            round!($f, $g, $h, $a, $b, $c, $d, $e, wk(3));
            $then!(1);
            round!($e, $f, $g, $h, $a, $b, $c, $d, wk(4));
            round!($d, $e, $f, $g, $h, $a, $b, $c, wk(5));
            $then!(2);
            round!($c, $d, $e, $f, $g, $h, $a, $b, wk(6));
            round!($b, $c, $d, $e, $f, $g, $h, $a, wk(7));
            $then!(3);
            round!($a, $b, $c, $d, $e, $f, $g, $h, wk(8));
            round!($h, $a, $b, $c, $d, $e, $f, $g, wk(9));
            $then!(4);
            round!($g, $h, $a, $b, $c, $d, $e, $f, wk(10));
            round!($f, $g, $h, $a, $b, $c, $d, $e, wk(11));
            $then!(5);
            round!($e, $f, $g, $h, $a, $b, $c, $d, wk(12));
            round!($d, $e, $f, $g, $h, $a, $b, $c, wk(13));
            $then!(6);
            round!($c, $d, $e, $f, $g, $h, $a, $b, wk(14));
            round!($b, $c, $d, $e, $f, $g, $h, $a, wk(15));
            $then!(7);
        };
    }

    macro_rules! nothing {
        ($j:literal) => {};
    }

    /// Runs `$body` on the state's eight words, then adds them into it.
    macro_rules! rounds_on {
        ($state:ident, |[$a:ident, $b:ident, $c:ident, $d:ident, $e:ident, $f:ident, $g:ident, $h:ident]| $body:block) => {
            let [mut $a, mut $b, mut $c, mut $d, mut $e, mut $f, mut $g, mut $h] = *$state;
            $body
            for (word, add) in $state.iter_mut().zip([$a, $b, $c, $d, $e, $f, $g, $h]) {
                *word = word.wrapping_add(add);
            }
        };
    }

    /// # Safety
    /// The CPU has AVX2, BMI1 and BMI2.
    #[target_feature(enable = "avx2,bmi1,bmi2")]
    unsafe fn compress(state: &mut [u64; 8], blocks: &[[u8; 128]]) {
        let big_endian = _mm256_setr_epi8(
            7, 6, 5, 4, 3, 2, 1, 0, 15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0, 15, 14,
            13, 12, 11, 10, 9, 8,
        );
        let mut scheduled = Scheduled([0; 160]);
        let out = scheduled.0.as_mut_ptr();
        // SAFETY (each store below): `out` is 32-byte aligned and a store
        // at `4p` for `p < 40` stays inside its 160 words.
        let store = |p: usize, words: __m256i| unsafe {
            out.add(4 * p).cast::<__m256i>().write_volatile(words)
        };
        // A lone block is scheduled beside itself; only its rounds run.
        for pair in blocks.chunks(2) {
            let (first, second) = (&pair[0], &pair[pair.len() - 1]);
            let mut x = [_mm256_setzero_si256(); 8];
            for (j, x) in x.iter_mut().enumerate() {
                // SAFETY: bytes `16j..16j + 16` of a 128-byte block.
                let both = unsafe {
                    _mm256_loadu2_m128i(
                        second.as_ptr().add(16 * j).cast(),
                        first.as_ptr().add(16 * j).cast(),
                    )
                };
                *x = _mm256_shuffle_epi8(both, big_endian);
                store(j, _mm256_add_epi64(*x, k(2 * j)));
            }
            rounds_on!(state, |[a, b, c, d, e, f, g, h]| {
                for t in (0..64).step_by(16) {
                    macro_rules! schedule {
                        ($j:literal) => {
                            x[$j] = next_words(
                                x[$j],
                                x[($j + 1) % 8],
                                x[($j + 4) % 8],
                                x[($j + 5) % 8],
                                x[($j + 7) % 8],
                            );
                            store(
                                (t + 16) / 2 + $j,
                                _mm256_add_epi64(x[$j], k(t + 16 + 2 * $j)),
                            );
                        };
                    }
                    sixteen!([a, b, c, d, e, f, g, h], out, t, 0, schedule);
                }
                sixteen!([a, b, c, d, e, f, g, h], out, 64, 0, nothing);
            });
            if pair.len() == 2 {
                rounds_on!(state, |[a, b, c, d, e, f, g, h]| {
                    for t in (0..80).step_by(16) {
                        sixteen!([a, b, c, d, e, f, g, h], out, t, 1, nothing);
                    }
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sha512(mut h: Sha512, data: &[u8]) -> String {
        h.update(data);
        hex::encode(h.finalize())
    }

    /// Every engine this machine can run.
    fn engines() -> Vec<fn() -> Sha512> {
        let mut engines: Vec<fn() -> Sha512> = vec![Sha512::new, Sha512::ring];
        #[cfg(target_arch = "x86_64")]
        if vector::Avx2::detect().is_some() {
            engines.push(|| Sha512::vector(vector::Avx2::detect().unwrap()));
        }
        engines
    }

    #[test]
    fn the_fips_180_examples() {
        let examples = [
            ("", "cf83e1357eefb8bdf1542850d66d8007d620e4050b5715dc83f4a921d36ce9ce47d0d13c5d85f2b0ff8318d2877eec2f63b931bd47417a81a538327af927da3e"),
            ("abc", "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f"),
            ("abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmnopqklmnopqrlmnopqrsmnopqrstnopqrstu",
             "8e959b75dae313da8cf4f72814fc143f8f7779c6eb9f7fa17299aeadb6889018501d289e4900f7e4331b99dec4b5433ac7d329eeb6dd26545e96e55b874be909"),
        ];
        for engine in engines() {
            for (text, expected) in examples {
                assert_eq!(sha512(engine(), text.as_bytes()), expected, "{text:?}");
            }
            let million_a = vec![b'a'; 1_000_000];
            assert_eq!(
                sha512(engine(), &million_a),
                "e718483d0ce769644e2e42c7bc15b4638e1f98b13b2044285632a803afa973ebde0ff244877ea60a4cb0432ce577c31beb009c5c2c49aa2e4eadb217ad8cc09b"
            );
        }
    }

    proptest! {
        /// Lengths around the padding's boundaries and across odd and even
        /// block counts, fed in three pieces split anywhere, give the sha2
        /// crate's digest on every engine.
        #[test]
        fn matches_the_reference_however_the_bytes_arrive(
            data in proptest::collection::vec(any::<u8>(), 0..700),
            one in any::<prop::sample::Index>(),
            two in any::<prop::sample::Index>(),
        ) {
            use sha2::Digest as _;
            let (a, b) = {
                let (x, y) = (one.index(data.len() + 1), two.index(data.len() + 1));
                (x.min(y), x.max(y))
            };
            let expected = hex::encode(sha2::Sha512::digest(&data));
            for engine in engines() {
                let mut h = engine();
                h.update(&data[..a]);
                h.update(&data[a..b]);
                h.update(&data[b..]);
                prop_assert_eq!(hex::encode(h.finalize()), expected.as_str());
            }
        }
    }
}
