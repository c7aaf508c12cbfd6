//! Printing figures as `name: value unit`, one per line.

use std::time::Duration;

pub fn print(name: &str, value: f64, unit: &str) {
    // Whole numbers and large values need no decimals; small ones keep three.
    let value = if value.fract() == 0.0 || value.abs() >= 100.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.3}")
    };
    let line = format!("{name}: {value} {unit}");
    println!("{}", line.trim_end());
}

/// A figure that is not a number, as `name: text`.
pub fn print_text(name: &str, text: &str) {
    println!("{name}: {text}");
}

/// The `fraction` percentile of sorted durations.
pub fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() - 1) as f64 * fraction).round() as usize;
    sorted[index]
}

pub fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}
