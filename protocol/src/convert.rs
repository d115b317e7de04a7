//! Conversions from what devices report to the canonical units of [`Quantity`].
//!
//! Linear conversions within one dimension (°F → °C, kPa → hPa, mm → m) are
//! [`Unit::convert`]. This module adds the ones that need more than two units:
//!
//! - gas volume fraction ↔ mass concentration, which needs the gas's molar mass and the
//!   temperature and pressure the mass concentration refers to ([`ReferenceConditions`]);
//! - 4–20 mA current loops, which need the transmitter's range and whose out-of-band currents
//!   are faults per NAMUR NE 43 ([`loop_current_to_value`]);
//! - [`to_canonical`], which a decoder calls to bring any reported value into the quantity's
//!   canonical unit.

use core::fmt;

use crate::quantity::Quantity;
use crate::unit::{ConversionError, Dimension, Unit};

/// Molar gas constant R in J/(mol·K) (CODATA 2018, exact).
pub const MOLAR_GAS_CONSTANT: f64 = 8.314_462_618;

/// The temperature and pressure that a mass concentration (mg/m³) refers to.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ReferenceConditions {
    /// Absolute temperature in kelvin.
    pub temperature_k: f64,
    /// Absolute pressure in kilopascal.
    pub pressure_kpa: f64,
}

impl ReferenceConditions {
    /// 25 °C and 101.325 kPa: the reference state of GB 3095-2012 (amendment 1, 2018) for
    /// gaseous ambient pollutants, and of occupational-hygiene ppm ↔ mg/m³ tables (molar volume
    /// 24.47 L/mol). The default for everything Tianzhong normalises.
    pub const AMBIENT_25C: ReferenceConditions = ReferenceConditions {
        temperature_k: 298.15,
        pressure_kpa: 101.325,
    };

    /// 0 °C and 101.325 kPa: the standard state of stack-emission measurements (molar volume
    /// 22.41 L/mol).
    pub const STANDARD_0C: ReferenceConditions = ReferenceConditions {
        temperature_k: 273.15,
        pressure_kpa: 101.325,
    };

    /// Molar volume of an ideal gas in L/mol: `Vm = R·T / p` (with p in kPa the result is in L).
    pub fn molar_volume_l(&self) -> Result<f64, ConversionError> {
        let valid = |x: f64| x > 0.0 && x.is_finite();
        if !(valid(self.temperature_k) && valid(self.pressure_kpa)) {
            return Err(ConversionError::InvalidParameter(
                "reference temperature and pressure must be positive and finite",
            ));
        }
        Ok(MOLAR_GAS_CONSTANT * self.temperature_k / self.pressure_kpa)
    }
}

impl Default for ReferenceConditions {
    fn default() -> Self {
        ReferenceConditions::AMBIENT_25C
    }
}

/// Converts a gas volume fraction in ppm to a mass concentration in mg/m³:
/// `mg/m³ = ppm × M / Vm`, with `M` the molar mass in g/mol and `Vm = R·T/p` the molar volume
/// in L/mol at the reference conditions.
///
/// (1 ppm is 10⁻⁶ m³ of gas per m³ of air, i.e. 10⁻³/Vm mol, i.e. M/Vm mg.)
pub fn ppm_to_mg_per_m3(
    ppm: f64,
    molar_mass_g_per_mol: f64,
    conditions: &ReferenceConditions,
) -> Result<f64, ConversionError> {
    check_gas_args(ppm, molar_mass_g_per_mol)?;
    Ok(ppm * molar_mass_g_per_mol / conditions.molar_volume_l()?)
}

/// Converts a mass concentration in mg/m³ to a volume fraction in ppm:
/// `ppm = mg/m³ × Vm / M`, the inverse of [`ppm_to_mg_per_m3`].
pub fn mg_per_m3_to_ppm(
    mg_per_m3: f64,
    molar_mass_g_per_mol: f64,
    conditions: &ReferenceConditions,
) -> Result<f64, ConversionError> {
    check_gas_args(mg_per_m3, molar_mass_g_per_mol)?;
    Ok(mg_per_m3 * conditions.molar_volume_l()? / molar_mass_g_per_mol)
}

fn check_gas_args(value: f64, molar_mass: f64) -> Result<(), ConversionError> {
    if !value.is_finite() {
        return Err(ConversionError::NotFinite);
    }
    if !(molar_mass > 0.0 && molar_mass.is_finite()) {
        return Err(ConversionError::InvalidParameter(
            "molar mass must be positive and finite",
        ));
    }
    Ok(())
}

/// A loop current that carries failure information rather than a measurement (NAMUR NE 43).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LoopFault {
    /// At or below 3.6 mA: open loop, broken wire, or the transmitter signalling a failure.
    Low {
        /// The measured current in mA.
        milliamps: f64,
    },
    /// At or above 21.0 mA: short circuit or the transmitter signalling a failure.
    High {
        /// The measured current in mA.
        milliamps: f64,
    },
}

impl fmt::Display for LoopFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoopFault::Low { milliamps } => {
                write!(
                    f,
                    "loop current {milliamps:.3} mA <= 3.6 mA: open loop or transmitter fault (NAMUR NE 43)"
                )
            }
            LoopFault::High { milliamps } => {
                write!(
                    f,
                    "loop current {milliamps:.3} mA >= 21.0 mA: short circuit or transmitter fault (NAMUR NE 43)"
                )
            }
        }
    }
}

/// Where a valid loop current lies relative to the transmitter's 4–20 mA span.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoopSpan {
    /// 4.0 to 20.0 mA: a measurement within the transmitter's range.
    Within,
    /// Above 3.6 and below 4.0 mA: the process is below the range (NE 43 allows down to 3.8 mA
    /// for measurement; the value is extrapolated and should be flagged out of range).
    Below,
    /// Above 20.0 and below 21.0 mA: the process is above the range.
    Above,
}

/// NE 43 failure thresholds in mA.
pub const NE43_FAULT_LOW_MA: f64 = 3.6;
/// NE 43 failure threshold in mA.
pub const NE43_FAULT_HIGH_MA: f64 = 21.0;

/// Converts a 4–20 mA loop current into engineering units, linearly:
/// `value = lo + (mA − 4) / 16 × (hi − lo)`, where `lo` and `hi` are the transmitter's range
/// at 4 mA and 20 mA.
///
/// Per NAMUR NE 43, a current at or below 3.6 mA or at or above 21.0 mA is failure
/// information, returned as [`ConversionError::LoopFault`], never as a value. Between the fault
/// limits and the span the value is extrapolated and [`LoopSpan`] says on which side it lies.
pub fn loop_current_to_value(
    milliamps: f64,
    range_lo: f64,
    range_hi: f64,
) -> Result<(f64, LoopSpan), ConversionError> {
    if !milliamps.is_finite() || !range_lo.is_finite() || !range_hi.is_finite() {
        return Err(ConversionError::NotFinite);
    }
    if range_lo == range_hi {
        return Err(ConversionError::InvalidParameter(
            "transmitter range is empty",
        ));
    }
    if milliamps <= NE43_FAULT_LOW_MA {
        return Err(ConversionError::LoopFault(LoopFault::Low { milliamps }));
    }
    if milliamps >= NE43_FAULT_HIGH_MA {
        return Err(ConversionError::LoopFault(LoopFault::High { milliamps }));
    }
    let span = if milliamps < 4.0 {
        LoopSpan::Below
    } else if milliamps > 20.0 {
        LoopSpan::Above
    } else {
        LoopSpan::Within
    };
    Ok((
        range_lo + (milliamps - 4.0) / 16.0 * (range_hi - range_lo),
        span,
    ))
}

/// Brings a value reported in `unit` into the canonical unit of `quantity`.
///
/// Same-dimension units convert linearly ([`Unit::convert`]); a gas reported as a volume
/// fraction (ppm, ppb, %vol) whose canonical unit is a mass concentration (mg/m³, µg/m³), or the
/// other way round, converts through its molar mass at `conditions`.
pub fn to_canonical(
    quantity: Quantity,
    value: f64,
    unit: Unit,
    conditions: &ReferenceConditions,
) -> Result<f64, ConversionError> {
    let canonical = quantity.canonical_unit();
    if unit.dimension() == canonical.dimension() {
        return unit.convert(value, canonical);
    }
    convert_gas(quantity, value, unit, canonical, conditions)
}

/// Converts a value of `quantity` from its canonical unit into `unit` (for uplinks and displays
/// that want another unit, e.g. HJ 212 reports air pressure in kPa).
pub fn from_canonical(
    quantity: Quantity,
    value: f64,
    unit: Unit,
    conditions: &ReferenceConditions,
) -> Result<f64, ConversionError> {
    let canonical = quantity.canonical_unit();
    if unit.dimension() == canonical.dimension() {
        return canonical.convert(value, unit);
    }
    convert_gas(quantity, value, canonical, unit, conditions)
}

fn convert_gas(
    quantity: Quantity,
    value: f64,
    from: Unit,
    to: Unit,
    conditions: &ReferenceConditions,
) -> Result<f64, ConversionError> {
    let molar_mass = || {
        quantity
            .spec()
            .molar_mass
            .ok_or(ConversionError::NoMolarMass)
    };
    match (from.dimension(), to.dimension()) {
        (Dimension::VolumeFraction, Dimension::MassConcentration) => {
            let ppm = from.convert(value, Unit::PartsPerMillion)?;
            let mg = ppm_to_mg_per_m3(ppm, molar_mass()?, conditions)?;
            Unit::MilligramPerCubicMetre.convert(mg, to)
        }
        (Dimension::MassConcentration, Dimension::VolumeFraction) => {
            let mg = from.convert(value, Unit::MilligramPerCubicMetre)?;
            let ppm = mg_per_m3_to_ppm(mg, molar_mass()?, conditions)?;
            Unit::PartsPerMillion.convert(ppm, to)
        }
        _ => Err(ConversionError::IncompatibleUnits { from, to }),
    }
}
