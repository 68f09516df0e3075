//! The server's memory budget for transfer buffers (`--max-memory`): each transfer reserves
//! what its window can hold before its OACK is sent; when the budget is spent, new transfers
//! are granted a smaller blksize x windowsize instead of being refused.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tftpx_proto::negotiate::{
    negotiate_server, Direction, NegotiateError, ServerLimits, ServerNegotiation,
};
use tftpx_proto::wire::{OptionList, DATA_HEADER_LEN, DEFAULT_BLKSIZE};

/// Bytes a transfer of `blksize` x `windowsize` may hold at most: its block ring (sender) or
/// receive buffer, plus `extra` (read or write buffers).
fn cost(blksize: u16, windowsize: u16, extra: usize) -> usize {
    (DATA_HEADER_LEN + usize::from(blksize)) * usize::from(windowsize.max(1)) + extra
}

/// Memory reserved for transfer buffers, shared by a server's transfers.
#[derive(Debug)]
pub(crate) struct MemoryBudget {
    limit: usize,
    used: AtomicUsize,
}

/// A transfer's share of the budget, given back when dropped.
#[derive(Debug)]
pub(crate) struct Reservation {
    budget: Arc<MemoryBudget>,
    bytes: usize,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

impl MemoryBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            limit,
            used: AtomicUsize::new(0),
        })
    }

    /// Bytes reserved now.
    #[cfg(test)]
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Negotiates `options` within `limits` and what is left of the budget, and reserves
    /// what the result needs (`extra` bytes of other buffers included). When the budget
    /// cannot hold what was asked, windowsize shrinks first, then blksize, down to 512-byte
    /// lock-step, which is always granted (even beyond the budget, by a few KiB).
    ///
    /// # Errors
    /// What [`negotiate_server`] returns.
    pub fn negotiate(
        self: &Arc<Self>,
        direction: Direction,
        options: OptionList<'_>,
        limits: &ServerLimits,
        file_size: Option<u64>,
        extra: impl Fn(u16, u16) -> usize,
    ) -> Result<(ServerNegotiation, Reservation), NegotiateError> {
        let mut limits = *limits;
        loop {
            let neg = negotiate_server(direction, options, &limits, file_size)?;
            let n = neg.negotiated;
            let want = cost(n.blksize, n.windowsize, extra(n.blksize, n.windowsize));
            let floor = n.blksize <= DEFAULT_BLKSIZE && n.windowsize <= 1;
            if let Some(r) = self.try_reserve(want, floor) {
                return Ok((neg, r));
            }
            // Shrink to what is left: the window first, then the block size.
            let left = self.limit.saturating_sub(self.used.load(Ordering::Relaxed));
            let per_block = DATA_HEADER_LEN + usize::from(n.blksize);
            if n.windowsize > 1 {
                let fit = left.saturating_sub(extra(n.blksize, 1)) / per_block;
                limits.max_windowsize = (fit.clamp(1, usize::from(n.windowsize) - 1)) as u16;
            } else {
                limits.max_windowsize = 1;
                let fit = left
                    .saturating_sub(extra(n.blksize, 1))
                    .saturating_sub(DATA_HEADER_LEN);
                limits.max_blksize =
                    (fit.min(usize::from(n.blksize) / 2) as u16).max(DEFAULT_BLKSIZE);
            }
        }
    }

    fn try_reserve(self: &Arc<Self>, bytes: usize, always: bool) -> Option<Reservation> {
        let mut used = self.used.load(Ordering::Relaxed);
        loop {
            if !always && used + bytes > self.limit {
                return None;
            }
            match self.used.compare_exchange_weak(
                used,
                used + bytes,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    return Some(Reservation {
                        budget: self.clone(),
                        bytes,
                    })
                }
                Err(u) => used = u,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn big() -> OptionList<'static> {
        OptionList::new(b"blksize\x0065464\x00windowsize\x0064\x00").unwrap()
    }

    #[test]
    fn a_spent_budget_shrinks_windows_instead_of_refusing() {
        let b = MemoryBudget::new(16 << 20);
        let limits = ServerLimits::default();
        let mut held = Vec::new();
        let mut granted = Vec::new();
        for _ in 0..8 {
            let (n, r) = b
                .negotiate(Direction::Read, big(), &limits, Some(1 << 30), |_, _| 0)
                .unwrap();
            granted.push((n.negotiated.blksize, n.negotiated.windowsize));
            held.push(r);
        }
        // 16 MiB holds four full windows (64 x 65,468 bytes each), then what is left as
        // one smaller block, then 512-byte lock-step: never a refusal.
        assert_eq!(&granted[..4], &[(65464, 64); 4]);
        assert_eq!(granted[4], (17404, 1), "{granted:?}");
        assert_eq!(&granted[5..], &[(512, 1); 3]);
        assert!(b.used() <= (16 << 20) + 4096, "{}", b.used());
        // Given back when the transfers end.
        held.clear();
        assert_eq!(b.used(), 0);
        let (n, _r) = b
            .negotiate(Direction::Read, big(), &limits, Some(1 << 30), |_, _| 0)
            .unwrap();
        assert_eq!(n.negotiated.windowsize, 64);
    }
}
