//! `tianzhong-sim`: runs a simulated sensor fleet.

fn main() {
    println!("tianzhong-sim: the command line lands with the fleet runner");
}
