//! Units of measure that devices report in, and the linear conversions between units of one
//! dimension.
//!
//! Every [`Quantity`](crate::Quantity) has one canonical unit; devices from different vendors
//! report in many others. Conversions that need more than the two units — ppm to mg/m³ needs the
//! gas's molar mass and the reference conditions, a 4–20 mA loop needs the transmitter's range —
//! live in [`convert`](crate::convert).
//!
//! Units serialise as short ASCII symbols (`"degC"`, `"ug/m3"`, `"%LEL"`) so that a device with a
//! plain C string library can write them; [`Unit::parse`] also accepts the common spellings seen
//! in the field (`"°C"`, `"℃"`, `"μg/m³"`, `"% LEL"`).

use core::fmt;

use serde::{Deserialize, Serialize};

/// What a unit measures. Only units of the same dimension convert into each other linearly.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dimension {
    /// Temperature.
    Temperature,
    /// Relative humidity.
    RelativeHumidity,
    /// Pressure.
    Pressure,
    /// Speed.
    Speed,
    /// Plane angle.
    Angle,
    /// Length (rainfall amount, water level).
    Length,
    /// Length per time for rainfall intensity.
    RainfallRate,
    /// Mass of a substance per volume of air.
    MassConcentration,
    /// Volume (= mole, for ideal gases) fraction of a gas in air.
    VolumeFraction,
    /// Fraction of a combustible gas's lower explosive limit.
    LowerExplosiveLimit,
    /// Volumetric flow.
    Flow,
    /// Light obscuration per metre of smoke.
    Obscuration,
    /// Vibration velocity.
    VibrationVelocity,
    /// Electric current (4–20 mA loops).
    Current,
}

macro_rules! units {
    ($( $(#[$doc:meta])* $variant:ident = $code:literal, $symbol:literal, $display:literal,
        $dim:ident, $scale:expr, $offset:expr; )*) => {
        /// A unit of measure.
        ///
        /// Each unit is defined by a linear map onto the base unit of its [`Dimension`]:
        /// `base = value * scale + offset`.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[repr(u16)]
        pub enum Unit {
            $( $(#[$doc])* #[serde(rename = $symbol)] $variant = $code, )*
        }

        impl Unit {
            /// Every unit, in code order.
            pub const ALL: &'static [Unit] = &[$(Unit::$variant),*];

            /// The ASCII symbol used on the wire (JSON payloads, configuration files).
            pub const fn symbol(self) -> &'static str {
                match self { $(Unit::$variant => $symbol,)* }
            }

            /// The symbol as people write it (may contain non-ASCII characters such as `°`).
            pub const fn display_symbol(self) -> &'static str {
                match self { $(Unit::$variant => $display,)* }
            }

            /// What this unit measures.
            pub const fn dimension(self) -> Dimension {
                match self { $(Unit::$variant => Dimension::$dim,)* }
            }

            /// Stable numeric code, used in Modbus registers and binary frames.
            pub const fn code(self) -> u16 {
                self as u16
            }

            /// The unit with this numeric code.
            pub fn from_code(code: u16) -> Option<Unit> {
                match code { $($code => Some(Unit::$variant),)* _ => None }
            }

            /// `(scale, offset)` such that `base = value * scale + offset`.
            const fn to_base(self) -> (f64, f64) {
                match self { $(Unit::$variant => ($scale, $offset),)* }
            }
        }
    };
}

units! {
    /// Degree Celsius (canonical temperature unit).
    DegreeCelsius = 1, "degC", "°C", Temperature, 1.0, 0.0;
    /// Degree Fahrenheit: °C = (°F − 32) × 5/9.
    DegreeFahrenheit = 2, "degF", "°F", Temperature, 5.0 / 9.0, -32.0 * 5.0 / 9.0;
    /// Kelvin: °C = K − 273.15.
    Kelvin = 3, "K", "K", Temperature, 1.0, -273.15;
    /// Percent relative humidity.
    PercentRelativeHumidity = 10, "%RH", "%RH", RelativeHumidity, 1.0, 0.0;
    /// Hectopascal (canonical pressure unit; equal to the millibar).
    HectoPascal = 20, "hPa", "hPa", Pressure, 1.0, 0.0;
    /// Kilopascal: 1 kPa = 10 hPa.
    KiloPascal = 21, "kPa", "kPa", Pressure, 10.0, 0.0;
    /// Pascal: 1 Pa = 0.01 hPa.
    Pascal = 22, "Pa", "Pa", Pressure, 0.01, 0.0;
    /// Metre per second (canonical speed unit).
    MetrePerSecond = 30, "m/s", "m/s", Speed, 1.0, 0.0;
    /// Kilometre per hour: 1 km/h = 1/3.6 m/s.
    KilometrePerHour = 31, "km/h", "km/h", Speed, 1.0 / 3.6, 0.0;
    /// Degree of arc (wind direction, tilt).
    Degree = 40, "deg", "°", Angle, 1.0, 0.0;
    /// Metre (canonical length unit).
    Metre = 50, "m", "m", Length, 1.0, 0.0;
    /// Centimetre.
    Centimetre = 51, "cm", "cm", Length, 0.01, 0.0;
    /// Millimetre (rainfall amount).
    Millimetre = 52, "mm", "mm", Length, 0.001, 0.0;
    /// Millimetre per hour (canonical rainfall intensity unit).
    MillimetrePerHour = 60, "mm/h", "mm/h", RainfallRate, 1.0, 0.0;
    /// Millimetre per minute: 1 mm/min = 60 mm/h.
    MillimetrePerMinute = 61, "mm/min", "mm/min", RainfallRate, 60.0, 0.0;
    /// Milligram per cubic metre (base of the mass-concentration dimension).
    MilligramPerCubicMetre = 70, "mg/m3", "mg/m³", MassConcentration, 1.0, 0.0;
    /// Microgram per cubic metre: 1 µg/m³ = 0.001 mg/m³.
    MicrogramPerCubicMetre = 71, "ug/m3", "µg/m³", MassConcentration, 0.001, 0.0;
    /// Parts per million by volume (base of the volume-fraction dimension).
    PartsPerMillion = 80, "ppm", "ppm", VolumeFraction, 1.0, 0.0;
    /// Parts per billion by volume: 1 ppb = 0.001 ppm.
    PartsPerBillion = 81, "ppb", "ppb", VolumeFraction, 0.001, 0.0;
    /// Percent by volume: 1 %vol = 10 000 ppm.
    PercentVolume = 82, "%vol", "%vol", VolumeFraction, 10_000.0, 0.0;
    /// Percent of the lower explosive limit.
    PercentLel = 90, "%LEL", "%LEL", LowerExplosiveLimit, 1.0, 0.0;
    /// Cubic metre per second (canonical flow unit).
    CubicMetrePerSecond = 100, "m3/s", "m³/s", Flow, 1.0, 0.0;
    /// Cubic metre per hour: 1 m³/h = 1/3600 m³/s.
    CubicMetrePerHour = 101, "m3/h", "m³/h", Flow, 1.0 / 3600.0, 0.0;
    /// Litre per second: 1 L/s = 0.001 m³/s.
    LitrePerSecond = 102, "L/s", "L/s", Flow, 0.001, 0.0;
    /// Percent obscuration per metre (smoke).
    PercentPerMetre = 110, "%/m", "%/m", Obscuration, 1.0, 0.0;
    /// Millimetre per second (vibration velocity, RMS).
    MillimetrePerSecond = 120, "mm/s", "mm/s", VibrationVelocity, 1.0, 0.0;
    /// Milliampere (4–20 mA current loops).
    Milliampere = 130, "mA", "mA", Current, 1.0, 0.0;
}

/// Why a value could not be converted between two units.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ConversionError {
    /// The two units measure different things, and no conversion between them is defined.
    IncompatibleUnits {
        /// The unit the value is in.
        from: Unit,
        /// The unit asked for.
        to: Unit,
    },
    /// The value is NaN or infinite.
    NotFinite,
    /// A conversion between volume fraction and mass concentration needs the gas's molar mass,
    /// and the quantity has none.
    NoMolarMass,
    /// A conversion parameter is out of its domain (a non-positive temperature or pressure,
    /// an empty transmitter range).
    InvalidParameter(&'static str),
    /// A 4–20 mA loop current outside NAMUR NE 43's measuring band: a fault, not a value.
    LoopFault(crate::convert::LoopFault),
}

impl fmt::Display for ConversionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConversionError::IncompatibleUnits { from, to } => write!(
                f,
                "cannot convert {} ({:?}) to {} ({:?})",
                from.symbol(),
                from.dimension(),
                to.symbol(),
                to.dimension()
            ),
            ConversionError::NotFinite => f.write_str("value is NaN or infinite"),
            ConversionError::NoMolarMass => {
                f.write_str("ppm <-> mg/m3 needs a gas with a molar mass")
            }
            ConversionError::InvalidParameter(what) => write!(f, "invalid parameter: {what}"),
            ConversionError::LoopFault(fault) => write!(f, "{fault}"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for ConversionError {}

/// A unit symbol that [`Unit::parse`] does not know.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnknownUnit;

impl fmt::Display for UnknownUnit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("unknown unit symbol")
    }
}

#[cfg(feature = "std")]
impl std::error::Error for UnknownUnit {}

impl Unit {
    /// Parses a unit symbol: the wire symbol, the display symbol, or a common field spelling.
    /// Matching ignores ASCII case only where the symbol is unambiguous (`"ppm"`, `"PPM"`), but
    /// not between `"mm"`/`"Mm"`-like pairs, which are all treated case-sensitively.
    pub fn parse(symbol: &str) -> Result<Unit, UnknownUnit> {
        let s = symbol.trim();
        for unit in Unit::ALL {
            if s == unit.symbol() || s == unit.display_symbol() {
                return Ok(*unit);
            }
        }
        let alias = match s {
            "℃" | "C" | "°c" | "celsius" => Unit::DegreeCelsius,
            "℉" | "F" | "fahrenheit" => Unit::DegreeFahrenheit,
            "% RH" | "RH" | "%rh" => Unit::PercentRelativeHumidity,
            "mbar" => Unit::HectoPascal,
            "μg/m3" | "μg/m³" | "ug/m³" | "µg/m3" => Unit::MicrogramPerCubicMetre,
            "mg/m³" | "mg/Nm3" => Unit::MilligramPerCubicMetre,
            "PPM" => Unit::PartsPerMillion,
            "PPB" => Unit::PartsPerBillion,
            "%VOL" | "%Vol" | "% vol" | "%v/v" | "VOL%" | "vol%" => Unit::PercentVolume,
            "% LEL" | "%lel" | "LEL%" => Unit::PercentLel,
            "m³/s" => Unit::CubicMetrePerSecond,
            "m³/h" => Unit::CubicMetrePerHour,
            "l/s" => Unit::LitrePerSecond,
            "°" | "degree" | "degrees" => Unit::Degree,
            "ma" => Unit::Milliampere,
            _ => return Err(UnknownUnit),
        };
        Ok(alias)
    }

    /// Converts `value` from this unit to `to` when both measure the same [`Dimension`].
    ///
    /// The conversion goes through the dimension's base unit: `base = value * scale + offset`,
    /// then `result = (base - offset_to) / scale_to`. For example °F → °C is
    /// `(°F − 32) × 5/9` and kPa → hPa is `kPa × 10`.
    pub fn convert(self, value: f64, to: Unit) -> Result<f64, ConversionError> {
        if !value.is_finite() {
            return Err(ConversionError::NotFinite);
        }
        if self == to {
            return Ok(value);
        }
        if self.dimension() != to.dimension() {
            return Err(ConversionError::IncompatibleUnits { from: self, to });
        }
        let (scale_from, offset_from) = self.to_base();
        let (scale_to, offset_to) = to.to_base();
        let base = value * scale_from + offset_from;
        Ok((base - offset_to) / scale_to)
    }
}

impl fmt::Display for Unit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.display_symbol())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_symbols_are_unique_and_round_trip() {
        for (i, a) in Unit::ALL.iter().enumerate() {
            assert_eq!(Unit::from_code(a.code()), Some(*a));
            assert_eq!(Unit::parse(a.symbol()), Ok(*a));
            assert_eq!(Unit::parse(a.display_symbol()), Ok(*a));
            for b in &Unit::ALL[i + 1..] {
                assert_ne!(a.code(), b.code());
                assert_ne!(a.symbol(), b.symbol());
            }
        }
    }

    #[test]
    fn incompatible_units_are_refused() {
        assert_eq!(
            Unit::Metre.convert(1.0, Unit::HectoPascal),
            Err(ConversionError::IncompatibleUnits {
                from: Unit::Metre,
                to: Unit::HectoPascal
            })
        );
        assert_eq!(
            Unit::Metre.convert(f64::NAN, Unit::Millimetre),
            Err(ConversionError::NotFinite)
        );
    }
}
