fn main() {
    println!("exportd");
}
