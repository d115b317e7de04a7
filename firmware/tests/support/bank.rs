//! A register bank over plain maps, for tests: a register exists when it has an entry, and a
//! request touching one that does not is exception 02, as a node answers for a hole in its map.

use std::collections::BTreeMap;

use tianzhong_firmware::modbus::{Exception, RegisterBank};

/// Input and holding registers and identification objects, each present or not.
#[derive(Clone, Debug, Default)]
pub struct MapBank {
    pub input: BTreeMap<u16, u16>,
    pub holding: BTreeMap<u16, u16>,
    /// Holding registers that reject writes with exception 02 (mapped read-only).
    pub read_only: Vec<u16>,
    pub identification: BTreeMap<u8, String>,
}

impl MapBank {
    pub fn new() -> Self {
        Self::default()
    }

    /// Maps input registers from `address` on with `values`.
    pub fn with_input(mut self, address: u16, values: &[u16]) -> Self {
        for (a, v) in addresses(address, values.len())
            .into_iter()
            .flatten()
            .zip(values)
        {
            self.input.insert(a, *v);
        }
        self
    }

    /// Maps holding registers from `address` on with `values`.
    pub fn with_holding(mut self, address: u16, values: &[u16]) -> Self {
        for (a, v) in addresses(address, values.len())
            .into_iter()
            .flatten()
            .zip(values)
        {
            self.holding.insert(a, *v);
        }
        self
    }

    /// Adds an identification object.
    pub fn with_object(mut self, id: u8, value: &str) -> Self {
        self.identification.insert(id, value.to_owned());
        self
    }

    /// The holding registers from `address` on, `None` where unmapped.
    pub fn holding_at(&self, address: u16, n: usize) -> Vec<Option<u16>> {
        addresses(address, n)
            .into_iter()
            .flatten()
            .map(|a| self.holding.get(&a).copied())
            .collect()
    }
}

/// The addresses of `n` registers from `address` on, or `None` when they would run past
/// 0xFFFF. Counted in u32: a `u16` range would overflow on its last step.
fn addresses(address: u16, n: usize) -> Option<impl Iterator<Item = u16>> {
    let start = u32::from(address);
    let end = start + u32::try_from(n).ok()?;
    (end <= 0x1_0000).then(|| (start..end).map(|a| a as u16))
}

fn read(map: &BTreeMap<u16, u16>, address: u16, out: &mut [u16]) -> Result<(), Exception> {
    let addresses = addresses(address, out.len()).ok_or(Exception::IllegalDataAddress)?;
    for (slot, a) in out.iter_mut().zip(addresses) {
        *slot = *map.get(&a).ok_or(Exception::IllegalDataAddress)?;
    }
    Ok(())
}

impl RegisterBank for MapBank {
    fn read_input_registers(&mut self, address: u16, out: &mut [u16]) -> Result<(), Exception> {
        read(&self.input, address, out)
    }

    fn read_holding_registers(&mut self, address: u16, out: &mut [u16]) -> Result<(), Exception> {
        read(&self.holding, address, out)
    }

    fn write_holding_registers(&mut self, address: u16, values: &[u16]) -> Result<(), Exception> {
        let writable = |a: u16| self.holding.contains_key(&a) && !self.read_only.contains(&a);
        let all_writable =
            addresses(address, values.len()).is_some_and(|mut addresses| addresses.all(writable));
        if !all_writable {
            return Err(Exception::IllegalDataAddress);
        }
        for (a, v) in addresses(address, values.len())
            .into_iter()
            .flatten()
            .zip(values)
        {
            self.holding.insert(a, *v);
        }
        Ok(())
    }

    fn device_identification(&self, object_id: u8) -> Option<&str> {
        self.identification.get(&object_id).map(String::as_str)
    }
}
