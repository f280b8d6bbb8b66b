//! Bytes fed in pieces of any size, handed to a compression function in
//! whole blocks, and the padding that ends MD5 and SHA-2 messages alike:
//! 0x80, zeros, then the message's length in bits, whose width and byte
//! order each digest sets.

pub(super) struct Blocks<const N: usize> {
    pending: [u8; N],
    pending_len: usize,
    total: u64,
}

impl<const N: usize> Blocks<N> {
    pub fn new() -> Self {
        Blocks {
            pending: [0; N],
            pending_len: 0,
            total: 0,
        }
    }

    /// Bytes fed so far.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Hands `compress` every block `data` completes; keeps the rest.
    pub fn update(&mut self, mut data: &[u8], mut compress: impl FnMut(&[[u8; N]])) {
        self.total = self.total.wrapping_add(data.len() as u64);
        if self.pending_len > 0 {
            let take = (N - self.pending_len).min(data.len());
            self.pending[self.pending_len..self.pending_len + take].copy_from_slice(&data[..take]);
            self.pending_len += take;
            data = &data[take..];
            if self.pending_len < N {
                return;
            }
            compress(&[self.pending]);
            self.pending_len = 0;
        }
        let (blocks, rest) = data.as_chunks::<N>();
        compress(blocks);
        self.pending[..rest.len()].copy_from_slice(rest);
        self.pending_len = rest.len();
    }

    /// Hands `compress` the last block or two: the bytes still pending,
    /// 0x80, zeros, and `length` at the very end.
    pub fn finish(&self, length: &[u8], compress: impl FnOnce(&[[u8; N]])) {
        let mut tail = [[0u8; N]; 2];
        let len = self.pending_len;
        let blocks = if len + 1 + length.len() <= N { 1 } else { 2 };
        let flat = tail.as_flattened_mut();
        flat[..len].copy_from_slice(&self.pending[..len]);
        flat[len] = 0x80;
        let end = blocks * N;
        flat[end - length.len()..end].copy_from_slice(length);
        compress(&tail[..blocks]);
    }
}
