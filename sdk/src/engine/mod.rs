//! The CPU engine: the graph resolved into kernels ([`program`]), a buffer plan per
//! session ([`plan`]) and the loops that run them ([`exec`]).

pub(crate) mod exec;
pub(crate) mod plan;
pub(crate) mod program;
