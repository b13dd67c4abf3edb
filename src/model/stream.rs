//! The residual stream of one forward pass, kept per segment with additions deferred.
//!
//! Under a cache policy most layers reuse the prompt's attention and FFN outputs, and nothing
//! reads the prompt's rows of the stream until a layer recomputes some of them (or the LM head
//! reads them). Adding two full-width tensors per layer to rows nobody reads, plus the copies
//! that glue the segments back together, was the largest cost of a cached layer. The stream
//! instead keeps reused outputs as a list of pending additions per segment and applies them, in
//! order, when the segment's rows are read. Elementwise additions applied in the same order give
//! the same float values whether applied at once or later, to all rows or to a slice of them.

use std::ops::Range;

use burn::tensor::Tensor;

/// The stream `[batch, seq, d_model]`: rows `0..prompt_len` are the prompt segment, the rest
/// the response segment.
pub(crate) struct Stream {
    prompt_len: usize,
    dims: [usize; 3],
    state: State,
}

#[allow(clippy::large_enum_variant)] // one per forward pass, never moved in a loop
enum State {
    /// Every row up to date, in one tensor.
    Whole(Tensor<3>),
    /// Prompt and response apart (`None` for an empty segment), each possibly behind.
    Split([Option<Part>; 2]),
}

/// One segment: `base` plus `pending[0]` plus `pending[1]` ... in that order.
struct Part {
    base: Tensor<3>,
    pending: Vec<Tensor<3>>,
}

impl Part {
    fn settle(&mut self) -> Tensor<3> {
        for t in self.pending.drain(..) {
            self.base = self.base.clone() + t;
        }
        self.base.clone()
    }

    /// Rows `start..start + len` of the settled segment, without settling the rest.
    fn rows(&self, start: usize, len: usize) -> Tensor<3> {
        let cut = |t: &Tensor<3>| t.clone().narrow(1, start, len);
        self.pending
            .iter()
            .fold(cut(&self.base), |acc, t| acc + cut(t))
    }
}

impl Stream {
    pub(crate) fn new(x: Tensor<3>, prompt_len: usize) -> Self {
        Self {
            prompt_len,
            dims: x.dims(),
            state: State::Whole(x),
        }
    }

    /// `[batch, seq, d_model]`.
    pub(crate) fn dims(&self) -> [usize; 3] {
        self.dims
    }

    /// Row range of segment `s` (0 prompt, 1 response).
    fn range(&self, s: usize) -> Range<usize> {
        if s == 0 {
            0..self.prompt_len
        } else {
            self.prompt_len..self.dims[1]
        }
    }

    fn split(&mut self) -> &mut [Option<Part>; 2] {
        if let State::Whole(x) = &self.state {
            let part = |r: Range<usize>| {
                (!r.is_empty()).then(|| Part {
                    base: x.clone().narrow(1, r.start, r.len()),
                    pending: Vec::new(),
                })
            };
            self.state = State::Split([part(self.range(0)), part(self.range(1))]);
        }
        match &mut self.state {
            State::Split(parts) => parts,
            State::Whole(_) => unreachable!("split above"),
        }
    }

    /// Every row, up to date.
    pub(crate) fn whole(&mut self) -> Tensor<3> {
        if let State::Split(parts) = &mut self.state {
            let settled: Vec<Tensor<3>> = parts.iter_mut().flatten().map(Part::settle).collect();
            self.state = State::Whole(Tensor::cat(settled, 1));
        }
        match &self.state {
            State::Whole(x) => x.clone(),
            State::Split(_) => unreachable!("joined above"),
        }
    }

    /// Replaces every row (after a layer that recomputed the whole sequence).
    pub(crate) fn set_whole(&mut self, x: Tensor<3>) {
        self.state = State::Whole(x);
    }

    /// Segment `s`'s rows, up to date. `s` must be non-empty.
    pub(crate) fn segment(&mut self, s: usize) -> Tensor<3> {
        let r = self.range(s);
        match &mut self.state {
            State::Whole(x) => x.clone().narrow(1, r.start, r.len()),
            State::Split(parts) => parts[s]
                .as_mut()
                .expect("segment() is called for non-empty segments")
                .settle(),
        }
    }

    /// Adds `t` (`[batch, rows of s, d_model]`) to segment `s`, when next read.
    pub(crate) fn add(&mut self, s: usize, t: Tensor<3>) {
        if let Some(part) = self.split()[s].as_mut() {
            part.pending.push(t);
        }
    }

    /// Rows `rows` of the stream, up to date, settling only those rows.
    pub(crate) fn rows(&self, rows: Range<usize>) -> Tensor<3> {
        match &self.state {
            State::Whole(x) => x.clone().narrow(1, rows.start, rows.len()),
            State::Split(parts) => {
                let pieces: Vec<Tensor<3>> = (0..2)
                    .filter_map(|s| {
                        let seg = self.range(s);
                        let (lo, hi) = (rows.start.max(seg.start), rows.end.min(seg.end));
                        let part = parts[s].as_ref()?;
                        (lo < hi).then(|| part.rows(lo - seg.start, hi - lo))
                    })
                    .collect();
                if pieces.len() == 1 {
                    pieces.into_iter().next().expect("one piece")
                } else {
                    Tensor::cat(pieces, 1)
                }
            }
        }
    }
}
