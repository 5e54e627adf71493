// classify (C++): top-3 classes of image files.
//   c++ -std=c++17 -I bindings/cpp classify.cpp $(pkg-config --cflags --libs cifar) -o classify_cpp
#include <cifar.hpp>

#include <fstream>
#include <iostream>
#include <iterator>

int main(int argc, char** argv) {
  if (argc < 3) {
    std::cerr << "usage: " << argv[0] << " MODEL.cifar IMAGE...\n";
    return 2;
  }
  try {
    cifar::Model model(argv[1]);
    std::cerr << "libcifar " << cifar::version() << ", " << model.precision() << " on " << model.device() << " ("
              << model.device_reason() << ")\n";
    cifar::Session session = model.session();
    for (int i = 2; i < argc; i++) {
      std::ifstream f(argv[i], std::ios::binary);
      std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
      std::cout << argv[i] << ":";
      for (const auto& p : session.classify_encoded(bytes, 3)) std::cout << " " << p.label << " " << p.probability;
      std::cout << "\n";
    }
  } catch (const cifar::Error& e) {
    std::cerr << "error (" << e.status() << "): " << e.what() << "\n";
    return 1;
  }
  return 0;
}
