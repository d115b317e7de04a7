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
//! | `update` | the update files (Modbus functions 21/20, files `0xF000`–`0xF004`) beside the node core's registers; the flash they write |
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
//!
//! # Receiving an update
//!
//! Function codes 21 and 20 on the update files reach the firmware crate's receiver
//! ([`tianzhong_firmware::update::modbus_files`]): offer, chunks or broadcast stream, finish,
//! status, as the gateway's `tianzhong flash` sends them. The receiver writes the slot the node
//! does not run from, with the public key the bootloader trusts; once a finish has checked and
//! staged the image, the reply goes out and the node resets into the bootloader. On the
//! hardware, each 128 KiB erase (the transfer sector on a new offer, a slot's sector on its
//! first chunk) stalls the CPU for 2 s typically, 4 s at most (the HAL erases with 8-bit
//! parallelism), longer than the 2 s watchdog: the board widens the watchdog to 8 s around
//! each erase (`board`). The QEMU variant writes RAM windows over its ROM flash (`update`).
#![no_std]
#![no_main]

include!("app.rs");
