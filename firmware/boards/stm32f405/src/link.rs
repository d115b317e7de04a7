//! The RS-485 link on USART1: an interrupt handler timestamps every received byte into a
//! queue, the main loop feeds them to the Modbus slave, and replies go out with the driver
//! enable (DE) line raised for exactly as long as the transceiver transmits.

use core::cell::RefCell;

use critical_section::Mutex;
use heapless::Deque;
use stm32f4xx_hal::pac::{self, TIM2, USART1, interrupt};
use stm32f4xx_hal::serial::{Rx, RxListen, Tx};

/// Bytes received and not yet handed to the slave, with the raw TIM2 time of arrival. One
/// maximal RTU frame fits.
type RxQueue = Deque<(u8, u32), 256>;

static RX: Mutex<RefCell<Option<Rx<USART1>>>> = Mutex::new(RefCell::new(None));
static QUEUE: Mutex<RefCell<RxQueue>> = Mutex::new(RefCell::new(Deque::new()));

/// The driver-enable line of the RS-485 transceiver.
pub trait DriverEnable {
    /// Drives the bus (true) or listens (false).
    fn set(&mut self, transmit: bool);
}

/// The transmitting half of the link.
pub struct Link<DE> {
    tx: Tx<USART1>,
    de: DE,
}

impl<DE: DriverEnable> Link<DE> {
    /// Starts receiving: the interrupt handler owns the receiver from now on.
    pub fn start(tx: Tx<USART1>, mut rx: Rx<USART1>, mut de: DE) -> Link<DE> {
        de.set(false);
        rx.listen();
        critical_section::with(|cs| RX.borrow(cs).replace(Some(rx)));
        // Unmasking is safe: the handler only touches state behind critical sections.
        #[allow(unsafe_code)]
        unsafe {
            cortex_m::peripheral::NVIC::unmask(pac::Interrupt::USART1);
        }
        Link { tx, de }
    }

    /// Bytes received and not taken yet.
    pub fn pending(&self) -> usize {
        critical_section::with(|cs| QUEUE.borrow(cs).borrow().len())
    }

    /// Takes the oldest byte received, with its raw TIM2 time. One at a time rather than
    /// all into a buffer: a 256-entry copy would cost the main loop 2 KiB of stack, which the
    /// update's signature check needs.
    pub fn pop(&mut self) -> Option<(u8, u32)> {
        critical_section::with(|cs| QUEUE.borrow(cs).borrow_mut().pop_front())
    }

    /// Whether bytes are waiting.
    pub fn has_input(cs: critical_section::CriticalSection<'_>) -> bool {
        !QUEUE.borrow(cs).borrow().is_empty()
    }

    /// Sends a reply, holding DE until the last stop bit has left the shift register.
    pub fn send(&mut self, bytes: &[u8]) {
        use embedded_hal_nb::serial::Write;
        self.de.set(true);
        for b in bytes {
            nb::block!(self.tx.write(*b)).ok();
        }
        nb::block!(self.tx.flush()).ok();
        self.de.set(false);
    }
}

#[interrupt]
fn USART1() {
    use embedded_hal_nb::serial::Read;
    critical_section::with(|cs| {
        let mut rx = RX.borrow(cs).borrow_mut();
        let Some(rx) = rx.as_mut() else {
            return;
        };
        // Drain everything the USART holds so the interrupt does not fire again at once.
        while let Ok(byte) = rx.read() {
            // A read of TIM2's counter has no side effects; the main loop owns TIM2 otherwise.
            #[allow(unsafe_code)]
            let at = crate::clock::MicroClock::raw(&unsafe { TIM2::steal() });
            // A byte lost to a full queue breaks its frame's CRC, and the slave counts that.
            let _ = QUEUE.borrow(cs).borrow_mut().push_back((byte, at));
        }
    });
}
