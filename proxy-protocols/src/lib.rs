//! Sans-I/O wire codecs for the jitgate access gateway.
//!
//! This crate only turns bytes into typed messages and typed messages into
//! bytes. It never performs I/O, never spawns tasks and does not depend on
//! tokio: decoders take a `&mut bytes::BytesMut` the caller has filled and
//! return `Ok(None)` when more bytes are needed; encoders append to a
//! `BytesMut` the caller will write out.
//!
//! Invariants every codec here upholds, because all input is hostile network
//! data:
//! - every length read from the wire is bounded before anything is allocated
//!   or reserved for it;
//! - no input can make a decoder panic (no unchecked indexing, arithmetic on
//!   lengths is checked);
//! - a decoder either consumes exactly one complete message or leaves the
//!   buffer's contents untouched.

#![forbid(unsafe_code)]
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]
#![warn(missing_docs)]

pub mod mysql;
pub mod postgres;
pub mod proxy;
pub mod ssh;
