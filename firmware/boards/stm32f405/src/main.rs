//! Tianzhong sensor node on an STM32F405.
//!
//! # Module map
//!
//! | module | what |
//! |---|---|
//! | `clock` | TIM2 microsecond clock, SysTick wake-up timer |
//! | `link` | RS-485 on USART1: timestamped receive interrupt, transmit with driver enable |
//! | `sensors` | the six channels read through the firmware's drivers |
//! | `board` | the real board: clocks, I2C sensors, ADC inputs, relays, watchdog, flash |
//! | `qemu` | the QEMU `netduinoplus2` variant: simulated sensors, nothing QEMU does not model |
//! | `flash` | the chip's flash as `NorFlash` (QEMU: read-only) |
//! | `slots` | the flash map, as a table; the board's hardware model |
//!
//! The main loop is the same for both: feed received bytes to the Modbus slave and answer it,
//! sample the channels that are due, tick the node core and carry out its actions, then sleep
//! with WFI until a byte arrives or the next deadline (frame end, next sample, next tick).
//!
//! # Images and slots
//!
//! This source builds twice: `tianzhong-board-stm32f405` is linked for firmware slot A,
//! `tianzhong-board-stm32f405-slot-b` for slot B (see `slots` and `memory.x`); the bootloader
//! (`tianzhong-bootloader-stm32f405`, `src/bootloader.rs`) runs one of them in place. At start
//! the application finds its slot from the address of its own code, reads its signed image
//! header there (the version it reports is the header's, the one the gateway signed and
//! compares) and the boot state. When it runs on trial, the first request it answers without
//! an exception (the gateway's health poll) confirms it; if none comes within
//! [`TRIAL_LIMIT`], it resets, and the bootloader counts a failed attempt
//! ([`tianzhong_firmware::update::trial`]).
#![no_std]
#![no_main]

include!("app.rs");
