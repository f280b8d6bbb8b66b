//! MD5 (RFC 1321), one of the hash worker's default digests.
//!
//! Each of MD5's 64 steps waits on the one before it, so its speed is the
//! length of that chain. Here each step first sums everything that does not
//! depend on the word the previous step produced (the old word, message
//! word, constant, and for G rounds `c & !d`) and only then adds the round
//! function of that newest word. The compiler otherwise reassociates the
//! sum with the round function first, two more instructions on the chain
//! per step: the portable and assembly crates both ran at 0.8× OpenSSL's
//! md5 on the bench machine, this code at 1.05×.

use super::blocks::Blocks;

const INIT: [u32; 4] = [0x6745_2301, 0xefcd_ab89, 0x98ba_dcfe, 0x1032_5476];

/// `floor(abs(sin(i + 1)) * 2^32)`, RFC 1321 section 3.4.
const K: [u32; 64] = [
    0xd76a_a478,
    0xe8c7_b756,
    0x2420_70db,
    0xc1bd_ceee,
    0xf57c_0faf,
    0x4787_c62a,
    0xa830_4613,
    0xfd46_9501,
    0x6980_98d8,
    0x8b44_f7af,
    0xffff_5bb1,
    0x895c_d7be,
    0x6b90_1122,
    0xfd98_7193,
    0xa679_438e,
    0x49b4_0821,
    0xf61e_2562,
    0xc040_b340,
    0x265e_5a51,
    0xe9b6_c7aa,
    0xd62f_105d,
    0x0244_1453,
    0xd8a1_e681,
    0xe7d3_fbc8,
    0x21e1_cde6,
    0xc337_07d6,
    0xf4d5_0d87,
    0x455a_14ed,
    0xa9e3_e905,
    0xfcef_a3f8,
    0x676f_02d9,
    0x8d2a_4c8a,
    0xfffa_3942,
    0x8771_f681,
    0x6d9d_6122,
    0xfde5_380c,
    0xa4be_ea44,
    0x4bde_cfa9,
    0xf6bb_4b60,
    0xbebf_bc70,
    0x289b_7ec6,
    0xeaa1_27fa,
    0xd4ef_3085,
    0x0488_1d05,
    0xd9d4_d039,
    0xe6db_99e5,
    0x1fa2_7cf8,
    0xc4ac_5665,
    0xf429_2244,
    0x432a_ff97,
    0xab94_23a7,
    0xfc93_a039,
    0x655b_59c3,
    0x8f0c_cc92,
    0xffef_f47d,
    0x8584_5dd1,
    0x6fa8_7e4f,
    0xfe2c_e6e0,
    0xa301_4314,
    0x4e08_11a1,
    0xf753_7e82,
    0xbd3a_f235,
    0x2ad7_d2bb,
    0xeb86_d391,
];

/// Per round: which message word each step reads, and the four rotations.
const ROUNDS: [([usize; 16], [u32; 4]); 4] = [
    (
        [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15],
        [7, 12, 17, 22],
    ),
    (
        [1, 6, 11, 0, 5, 10, 15, 4, 9, 14, 3, 8, 13, 2, 7, 12],
        [5, 9, 14, 20],
    ),
    (
        [5, 8, 11, 14, 1, 4, 7, 10, 13, 0, 3, 6, 9, 12, 15, 2],
        [4, 11, 16, 23],
    ),
    (
        [0, 7, 14, 5, 12, 3, 10, 1, 8, 15, 6, 13, 4, 11, 2, 9],
        [6, 10, 15, 21],
    ),
];

/// An MD5 digest fed in pieces.
pub(crate) struct Md5 {
    state: [u32; 4],
    blocks: Blocks<64>,
}

impl Md5 {
    pub fn new() -> Self {
        Md5 {
            state: INIT,
            blocks: Blocks::new(),
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        let state = &mut self.state;
        self.blocks.update(data, |blocks| compress(state, blocks));
    }

    pub fn finalize(mut self) -> [u8; 16] {
        let bits = self.blocks.total().wrapping_mul(8);
        let state = &mut self.state;
        self.blocks
            .finish(&bits.to_le_bytes(), |blocks| compress(state, blocks));
        let mut out = [0u8; 16];
        for (o, word) in out.chunks_exact_mut(4).zip(self.state) {
            o.copy_from_slice(&word.to_le_bytes());
        }
        out
    }
}

/// The MD5 of `data`.
pub(crate) fn md5(data: &[u8]) -> [u8; 16] {
    let mut h = Md5::new();
    h.update(data);
    h.finalize()
}

/// `x`, as a value the optimizer cannot see into, so a sum built before it
/// is not reassociated with what is added after it. An empty assembly
/// block: it emits no instruction.
#[inline(always)]
fn settled(mut x: u32) -> u32 {
    // SAFETY: the assembly is a comment; it reads and writes only `x`'s
    // register and touches no memory, stack or flags.
    #[cfg(any(target_arch = "x86_64", target_arch = "x86"))]
    unsafe {
        core::arch::asm!("/* {0:e} */", inout(reg) x, options(pure, nomem, nostack, preserves_flags));
    }
    // SAFETY: as above.
    #[cfg(target_arch = "aarch64")]
    unsafe {
        core::arch::asm!("/* {0:w} */", inout(reg) x, options(pure, nomem, nostack, preserves_flags));
    }
    x
}

fn compress(state: &mut [u32; 4], blocks: &[[u8; 64]]) {
    let mut s = *state;
    for block in blocks {
        let mut m = [0u32; 16];
        for (w, bytes) in m.iter_mut().zip(block.as_chunks::<4>().0) {
            *w = u32::from_le_bytes(*bytes);
        }
        // (a, b, c, d) rotate one place right after each step, so `b` is
        // always the word the previous step produced.
        let [mut a, mut b, mut c, mut d] = s;
        for (round, (order, rotations)) in ROUNDS.iter().enumerate() {
            for step in 0..16 {
                let i = round * 16 + step;
                let early = a.wrapping_add(m[order[step]]).wrapping_add(K[i]);
                let mixed = match round {
                    0 => settled(early).wrapping_add(((c ^ d) & b) ^ d),
                    1 => settled(early.wrapping_add(c & !d)).wrapping_add(b & d),
                    2 => settled(early).wrapping_add((c ^ d) ^ b),
                    _ => settled(early).wrapping_add((b | !d) ^ c),
                };
                let next = mixed.rotate_left(rotations[step % 4]).wrapping_add(b);
                (a, b, c, d) = (d, next, b, c);
            }
        }
        for (word, add) in s.iter_mut().zip([a, b, c, d]) {
            *word = word.wrapping_add(add);
        }
    }
    *state = s;
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_rfc_1321_test_suite() {
        let suite = [
            ("", "d41d8cd98f00b204e9800998ecf8427e"),
            ("a", "0cc175b9c0f1b6a831c399e269772661"),
            ("abc", "900150983cd24fb0d6963f7d28e17f72"),
            ("message digest", "f96b697d7cb7938d525a2f31aaf161d0"),
            (
                "abcdefghijklmnopqrstuvwxyz",
                "c3fcd3d76192e4007dfb496cca67e13b",
            ),
            (
                "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
                "d174ab98d277d9f5a5611c2c9f419d9f",
            ),
            (
                "12345678901234567890123456789012345678901234567890123456789012345678901234567890",
                "57edf4a22be3c955ac49da2e2107b67a",
            ),
        ];
        for (text, expected) in suite {
            assert_eq!(hex::encode(md5(text.as_bytes())), expected, "{text:?}");
        }
    }

    proptest! {
        /// Every length around the padding's block boundaries, fed in two
        /// pieces split anywhere, gives the reference crate's digest.
        #[test]
        fn matches_the_reference_however_the_bytes_arrive(
            data in proptest::collection::vec(any::<u8>(), 0..300),
            split in any::<prop::sample::Index>(),
        ) {
            use ::md5::Digest as _;
            let at = split.index(data.len() + 1);
            let mut h = Md5::new();
            h.update(&data[..at]);
            h.update(&data[at..]);
            let expected: [u8; 16] = ::md5::Md5::digest(&data).into();
            prop_assert_eq!(h.finalize(), expected);
        }
    }
}
