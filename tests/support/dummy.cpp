// keeps moec_test_support non-empty
