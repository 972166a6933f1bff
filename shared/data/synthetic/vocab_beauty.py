"""Vocabularies of the synthetic shop: beauty (skin care, makeup, hair care)."""

from __future__ import annotations

from shared.data.synthetic.vocab import department, leaf

SKIN_CARE = department(
    name="Skin Care",
    path="Beauty > Skin Care",
    brands="Lumina|Dermaveil|Aquarelle|Botanica Lab|Pure Ritual|Sol & Sage|Velvetine|Nordic Glow",
    attrs="Hydrating|Brightening|Anti-Aging|Soothing|Oil-Free|Firming|Gentle|Clarifying",
    mats="Rosewater|Hyaluronic Acid|Vitamin C|Niacinamide|Aloe Vera|Retinol|Green Tea|Ceramide|Squalane",
    sizes="30 ml|50 ml|100 ml|150 ml",
    audiences="dry skin|oily skin|sensitive skin|combination skin|mature skin|everyday use",
    title="{brand} {attr} {material} {noun} {size}",
    descriptions=(
        "{attr_l} {noun_l} with {material_l} for {audience}.",
        "This {attr_l} {noun_l} from {brand} pairs {material_l} with a lightweight texture for {audience}.",
        "Formulated with {material_l}, this {attr_l} {noun_l} keeps {audience} comfortable all day.",
    ),
    price=(19.0, 0.45),
    leaves=(
        leaf("Moisturizers", "Face Moisturizer|Day Cream|Night Cream|Gel Cream", comps="Serums|Sunscreen"),
        leaf("Cleansers", "Foaming Cleanser|Cleansing Balm|Micellar Water|Cleansing Gel", comps="Toners"),
        leaf("Serums", "Face Serum|Facial Oil|Essence|Ampoule", comps="Moisturizers|Eye Care", price=1.4),
        leaf(
            "Sunscreen",
            "Sunscreen SPF 50|Mineral Sunscreen SPF 30|Sun Fluid SPF 50|Tinted Sunscreen SPF 30",
            comps="Moisturizers|Cleansers",
        ),
        leaf(
            "Eye Care", "Eye Cream|Eye Gel|Under-Eye Patches|Eye Serum", comps="Serums", sizes="15 ml|20 ml"
        ),
        leaf("Masks", "Sheet Mask|Clay Mask|Overnight Mask|Peel-Off Mask", sizes="Pack of 5|75 ml|100 ml"),
        leaf("Toners", "Facial Toner|Exfoliating Toner|Face Mist", comps="Serums|Moisturizers", price=0.8),
    ),
)

MAKEUP = department(
    name="Makeup",
    path="Beauty > Makeup",
    brands="Velour Cosmetics|Kiss & Tell|Prism Beauty|Maison Rouge|Bare Canvas|Luxe Lab|Petal Pop",
    attrs="Long-Wear|Matte|Satin|Waterproof|Shimmer|Lightweight|Full-Coverage|Smudge-Proof",
    mats="Nude|Rose|Berry|Coral|Mocha|Ruby Red|Champagne|Plum",
    sizes="3 g|4 ml|6 ml|10 g",
    audiences="everyday looks|evening looks|sensitive eyes|long workdays|special occasions",
    title="{brand} {attr} {noun} in {material}, {size}",
    descriptions=(
        "{attr_l} {noun_l} in {a_material} shade made for {audience}.",
        "{brand}'s {attr_l} {noun_l} glides on in {material_l} and lasts through {audience}.",
    ),
    price=(14.0, 0.5),
    leaves=(
        leaf("Lips", "Liquid Lipstick|Lip Gloss|Lip Liner|Bullet Lipstick|Lip Stain", comps="Face Powders"),
        leaf("Mascara", "Volumizing Mascara|Lengthening Mascara|Lash Primer", comps="Eyeliner|Eyeshadow"),
        leaf(
            "Foundation",
            "Liquid Foundation|Cushion Foundation|Stick Foundation|BB Cream|Concealer",
            comps="Brushes & Tools|Face Powders",
            mats="Porcelain|Ivory|Sand|Beige|Honey|Caramel|Espresso",
            price=1.5,
        ),
        leaf("Eyeshadow", "Eyeshadow Palette|Cream Eyeshadow|Eyeshadow Stick", comps="Eyeliner|Mascara"),
        leaf(
            "Eyeliner", "Liquid Eyeliner|Gel Eyeliner|Kohl Pencil", comps="Mascara", mats="Black|Brown|Navy"
        ),
        leaf(
            "Face Powders",
            "Powder Blush|Cream Blush|Bronzer|Highlighter|Setting Powder",
            comps="Brushes & Tools",
        ),
        leaf(
            "Brushes & Tools",
            "Makeup Brush Set|Beauty Sponge|Eyelash Curler|Kabuki Brush",
            attrs="Vegan|Soft-Bristle|Travel-Size|Professional",
            mats="Rose Gold|Bamboo|Matte Black|Pearl White",
            sizes="Set of 5|Set of 12|Single",
        ),
    ),
)

HAIR_CARE = department(
    name="Hair Care",
    path="Beauty > Hair Care",
    brands="Silkroot|Mane Theory|Ocean Salt Co.|Keravita|Curl Culture|Argan House",
    attrs="Volumizing|Repairing|Color-Safe|Anti-Frizz|Moisturizing|Strengthening|Curl-Defining|Smoothing",
    mats="Argan Oil|Coconut|Keratin|Biotin|Tea Tree|Rosemary|Shea Butter|Sea Salt",
    sizes="250 ml|400 ml|500 ml|1 L",
    audiences="fine hair|curly hair|color-treated hair|thick hair|damaged hair|all hair types",
    title="{brand} {attr} {material} {noun} {size}",
    descriptions=(
        "{attr_l} {noun_l} with {material_l} for {audience}.",
        "{brand} blends {material_l} into this {attr_l} {noun_l}, made for {audience}.",
    ),
    price=(15.0, 0.45),
    leaves=(
        leaf("Shampoo", "Shampoo|Sulfate-Free Shampoo|Dry Shampoo|Clarifying Shampoo", comps="Conditioner"),
        leaf("Conditioner", "Conditioner|Leave-In Conditioner|Deep Conditioner", comps="Treatments|Shampoo"),
        leaf("Treatments", "Hair Mask|Scalp Treatment|Hair Serum|Hair Oil", comps="Shampoo", price=1.3),
        leaf("Styling Products", "Styling Gel|Texturizing Spray|Hair Mousse|Styling Cream|Hairspray"),
        leaf(
            "Styling Tools",
            "Hair Dryer|Hair Straightener|Curling Wand|Detangling Brush",
            comps="Styling Products|Treatments",
            attrs="Ionic|Cordless|Compact|Professional|Fast-Drying",
            mats="Ceramic|Tourmaline|Titanium|Boar Bristle",
            sizes="Travel Size|Full Size|Salon Edition",
            price=3.5,
        ),
    ),
)
