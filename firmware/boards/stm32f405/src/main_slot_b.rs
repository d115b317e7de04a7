//! Tianzhong sensor node on an STM32F405, linked for firmware slot B: the same application as
//! `main.rs` (see its documentation), whose items are in `app.rs`. `build.rs` gives this
//! binary the `SLOT_B` flash region of `memory.x`.
#![no_std]
#![no_main]

include!("app.rs");
