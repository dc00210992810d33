//! Cutting a lane's ordered cells into batches, and interleaving the lanes.

use outrider_model::{Batch, BatchState, Batching, Caps, Cell};

/// Nominal batch sizes in cells: `start`, `start·factor`, `start·factor²`… or `size` each time.
#[derive(Debug)]
struct Sizes {
    next: u64,
    factor: u64,
}

impl Sizes {
    fn new(batching: &Batching) -> Self {
        match *batching {
            Batching::Exponential { start, factor } => Self { next: start.max(1), factor: factor.max(1) },
            Batching::Linear { size } => Self { next: size.max(1), factor: 1 },
        }
    }
}

impl Iterator for Sizes {
    type Item = u64;

    fn next(&mut self) -> Option<u64> {
        let size = self.next;
        self.next = size.saturating_mul(self.factor);
        Some(size)
    }
}

/// The lengths (in cells) of the batches that cut cells of `instances` each, in order.
///
/// Batch `k` takes the `k`-th nominal size of `batching`, cut further by `cap`: no more cells
/// than `cap.cells`, no more instances than `cap.instances`. Cells are never split: a cell
/// with more instances than `cap.instances` makes a batch on its own.
pub(super) fn cut(instances: &[u64], batching: &Batching, cap: Caps) -> Vec<usize> {
    let mut lengths = Vec::new();
    let mut sizes = Sizes::new(batching);
    let mut at = 0;
    while at < instances.len() {
        let nominal = sizes.next().unwrap_or(1);
        let max_cells = usize::try_from(nominal.min(cap.cells.unwrap_or(u64::MAX))).unwrap_or(usize::MAX).max(1);
        let mut len = 0;
        let mut total = 0u64;
        while at + len < instances.len() && len < max_cells {
            let n = instances[at + len];
            if len > 0 && cap.instances.is_some_and(|cap| total + n > cap) {
                break;
            }
            total += n;
            len += 1;
        }
        lengths.push(len);
        at += len;
    }
    lengths
}

/// The batches of every lane in one list: the first batch of each lane, then the second of
/// each lane, and so on (lanes that ran out are passed over). `index` is the position in the
/// list, `lane` the lane's number.
pub(super) fn interleave(lanes: Vec<Vec<Vec<Cell>>>) -> Vec<Batch> {
    let total = lanes.iter().map(Vec::len).sum();
    let mut out = Vec::with_capacity(total);
    let mut lanes: Vec<_> = lanes.into_iter().map(Vec::into_iter).collect();
    while out.len() < total {
        for (lane, batches) in lanes.iter_mut().enumerate() {
            if let Some(cells) = batches.next() {
                out.push(Batch {
                    index: out.len() as u32,
                    lane: lane as u32,
                    cells,
                    state: BatchState::Pending,
                    verdict: None,
                    started_at: None,
                    applied_at: None,
                    finished_at: None,
                    extensions: 0,
                    analysis: None,
                    predicted_start: None,
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXP: Batching = Batching::Exponential { start: 1, factor: 2 };

    #[test]
    fn exponential_doubles() {
        assert_eq!(cut(&[1; 20], &EXP, Caps::default()), [1, 2, 4, 8, 5]);
        let from3 = Batching::Exponential { start: 3, factor: 3 };
        assert_eq!(cut(&[1; 20], &from3, Caps::default()), [3, 9, 8]);
    }

    #[test]
    fn linear_is_fixed() {
        assert_eq!(cut(&[1; 7], &Batching::Linear { size: 3 }, Caps::default()), [3, 3, 1]);
        assert_eq!(cut(&[], &Batching::Linear { size: 3 }, Caps::default()), Vec::<usize>::new());
    }

    #[test]
    fn cell_cap_limits_growth() {
        let cap = Caps { cells: Some(3), instances: None };
        assert_eq!(cut(&[1; 12], &EXP, cap), [1, 2, 3, 3, 3]);
    }

    #[test]
    fn instance_cap_cuts_but_never_splits_a_cell() {
        let cap = Caps { cells: None, instances: Some(10) };
        // Nominal 1, 2, 4, 8: the 25-instance cell goes alone, the 4-cell batch is cut at 10.
        assert_eq!(cut(&[4, 25, 3, 3, 3, 3, 3, 1], &EXP, cap), [1, 1, 3, 3]);
        // Nominal sizes go on growing after a cut: 1, 2 (cut to 1), 4 (cut to 1), 8.
        assert_eq!(cut(&[5, 6, 6, 6, 1], &EXP, cap), [1, 1, 1, 2]);
    }

    #[test]
    fn interleaves_lanes_round_robin() {
        let cell = |s: &str| Cell { service: s.into(), region: "r".into(), env: "prod".into(), instances: 1 };
        let lanes = vec![vec![vec![cell("a")], vec![cell("b")], vec![cell("c")]], vec![vec![cell("x")]]];
        let got: Vec<(u32, u32, String)> =
            interleave(lanes).into_iter().map(|b| (b.index, b.lane, b.cells[0].service.clone())).collect();
        assert_eq!(got, [(0, 0, "a".into()), (1, 1, "x".into()), (2, 0, "b".into()), (3, 0, "c".into())]);
    }
}
