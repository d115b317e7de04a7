//! Alarm levels: normal and China's four warning levels.
//!
//! The Emergency Response Law grades warnings from level IV (blue, lowest) to level I (red,
//! highest); meteorological and geological warnings use the same ladder. [`AlarmLevel`] is
//! ordered so that `max()` over a set of alarms gives the most severe.
//!
//! | level | grade | colour | sRGB |
//! |---|---|---|---|
//! | [`AlarmLevel::Normal`] | — | green | `#00E400` |
//! | [`AlarmLevel::Blue`] | IV | blue (蓝色) | `#0000FF` |
//! | [`AlarmLevel::Yellow`] | III | yellow (黄色) | `#FFFF00` |
//! | [`AlarmLevel::Orange`] | II | orange (橙色) | `#FF7E00` |
//! | [`AlarmLevel::Red`] | I | red (红色) | `#FF0000` |
//!
//! The green, yellow, orange and red values are those of HJ 633's AQI level colours, so the
//! console shows one palette for warnings and air quality; blue is pure sRGB blue.

use core::fmt;

use serde::{Deserialize, Serialize};

/// An alarm level, ordered from normal to red.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
#[repr(u8)]
pub enum AlarmLevel {
    /// No alarm.
    #[default]
    Normal = 0,
    /// Level IV, blue.
    Blue = 1,
    /// Level III, yellow.
    Yellow = 2,
    /// Level II, orange.
    Orange = 3,
    /// Level I, red: the most severe.
    Red = 4,
}

/// An sRGB colour.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rgb(pub u8, pub u8, pub u8);

impl fmt::Display for Rgb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{:02X}{:02X}{:02X}", self.0, self.1, self.2)
    }
}

impl AlarmLevel {
    /// All levels, from normal to red.
    pub const ALL: [AlarmLevel; 5] = [
        AlarmLevel::Normal,
        AlarmLevel::Blue,
        AlarmLevel::Yellow,
        AlarmLevel::Orange,
        AlarmLevel::Red,
    ];

    /// Numeric code (0 normal … 4 red), as in the node profile's alarm registers.
    pub const fn code(self) -> u8 {
        self as u8
    }

    /// The level with this code.
    pub fn from_code(code: u16) -> Option<AlarmLevel> {
        AlarmLevel::ALL.get(usize::from(code)).copied()
    }

    /// The warning grade in Roman numerals (`"IV"` for blue … `"I"` for red), none for normal.
    pub const fn grade(self) -> Option<&'static str> {
        match self {
            AlarmLevel::Normal => None,
            AlarmLevel::Blue => Some("IV"),
            AlarmLevel::Yellow => Some("III"),
            AlarmLevel::Orange => Some("II"),
            AlarmLevel::Red => Some("I"),
        }
    }

    /// The display colour.
    pub const fn colour(self) -> Rgb {
        match self {
            AlarmLevel::Normal => Rgb(0x00, 0xE4, 0x00),
            AlarmLevel::Blue => Rgb(0x00, 0x00, 0xFF),
            AlarmLevel::Yellow => Rgb(0xFF, 0xFF, 0x00),
            AlarmLevel::Orange => Rgb(0xFF, 0x7E, 0x00),
            AlarmLevel::Red => Rgb(0xFF, 0x00, 0x00),
        }
    }

    /// Lower-case English key, as serialised.
    pub const fn key(self) -> &'static str {
        match self {
            AlarmLevel::Normal => "normal",
            AlarmLevel::Blue => "blue",
            AlarmLevel::Yellow => "yellow",
            AlarmLevel::Orange => "orange",
            AlarmLevel::Red => "red",
        }
    }

    /// Chinese label.
    pub const fn label_zh(self) -> &'static str {
        match self {
            AlarmLevel::Normal => "正常",
            AlarmLevel::Blue => "蓝色预警(IV级)",
            AlarmLevel::Yellow => "黄色预警(III级)",
            AlarmLevel::Orange => "橙色预警(II级)",
            AlarmLevel::Red => "红色预警(I级)",
        }
    }

    /// Whether this is an alarm at all.
    pub const fn is_alarm(self) -> bool {
        !matches!(self, AlarmLevel::Normal)
    }
}

impl fmt::Display for AlarmLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.key())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn red_is_the_most_severe_and_grades_run_backwards() {
        assert!(AlarmLevel::Normal < AlarmLevel::Blue);
        assert!(AlarmLevel::Blue < AlarmLevel::Yellow);
        assert!(AlarmLevel::Yellow < AlarmLevel::Orange);
        assert!(AlarmLevel::Orange < AlarmLevel::Red);
        assert_eq!(AlarmLevel::ALL.iter().max(), Some(&AlarmLevel::Red));
        assert_eq!(AlarmLevel::Blue.grade(), Some("IV"));
        assert_eq!(AlarmLevel::Red.grade(), Some("I"));
        for l in AlarmLevel::ALL {
            assert_eq!(AlarmLevel::from_code(u16::from(l.code())), Some(l));
        }
        assert_eq!(AlarmLevel::from_code(5), None);
        assert_eq!(std::format!("{}", AlarmLevel::Orange.colour()), "#FF7E00");
    }
}
