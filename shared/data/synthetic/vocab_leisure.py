"""Vocabularies of the synthetic shop: leisure (fitness, camping, toys, books)."""

from __future__ import annotations

from shared.data.synthetic.vocab import department, leaf

FITNESS = department(
    name="Fitness",
    path="Sports & Outdoors > Fitness",
    brands="Apex Motion|Stride Lab|IronPeak|Flowform|Kinetic Co.|Zenfit",
    audiences="home workouts|the gym|beginners|daily training|small spaces",
    title="{brand} {attr} {material} {noun} {size}",
    descriptions=(
        "{attr_l} {noun_l} made of {material_l} for {audience}.",
        "Train with the {brand} {noun_l}: {attr_l}, made of {material_l} and ready for {audience}.",
    ),
    price=(25.0, 0.55),
    leaves=(
        leaf(
            "Yoga",
            "Yoga Mat|Yoga Block|Yoga Strap|Yoga Towel",
            comps="Recovery",
            attrs="Non-Slip|Extra-Thick|Eco-Friendly|Lightweight",
            mats="Natural Rubber|TPE|Cork|Microfiber",
            sizes="6 mm|4 mm|2-Pack",
        ),
        leaf(
            "Strength Training",
            "Dumbbell Set|Kettlebell|Resistance Bands|Weight Plate|Pull-Up Bar",
            comps="Gym Accessories|Recovery",
            attrs="Adjustable|Heavy-Duty|Compact|Anti-Roll",
            mats="Cast Iron|Neoprene|Latex|Steel",
            sizes="10 lb|25 lb|Set of 5|52.5 lb",
            price=2.0,
        ),
        leaf(
            "Cardio",
            "Jump Rope|Ab Roller|Agility Ladder|Mini Stepper",
            comps="Gym Accessories",
            attrs="Speed|Adjustable|Foldable|Quiet",
            mats="Steel Cable|PVC|Foam-Grip",
            sizes="Standard|Pro|Set of 2",
            price=0.8,
        ),
        leaf(
            "Recovery",
            "Foam Roller|Massage Gun|Massage Ball|Stretching Strap",
            comps="Yoga",
            attrs="High-Density|Deep-Tissue|Portable|Textured",
            mats="EVA Foam|Silicone|TPE",
            sizes="18-inch|36-inch|Set of 2",
        ),
        leaf(
            "Gym Accessories",
            "Gym Bag|Lifting Gloves|Shaker Bottle|Weightlifting Belt|Sports Water Bottle",
            comps="Strength Training",
            attrs="Padded|Breathable|Leak-Proof|Durable",
            mats="Leather|Neoprene|BPA-Free Plastic|Nylon",
            sizes="Medium|Large|24 oz|32 oz",
            price=0.7,
        ),
    ),
)

CAMPING = department(
    name="Camping & Hiking",
    path="Sports & Outdoors > Camping & Hiking",
    brands="Trailhead|Summit Supply|Northbound|Canyon Gear|Evergreen Outfitters",
    audiences="weekend trips|backpacking|family camping|day hikes|festivals",
    title="{brand} {attr} {material} {noun}, {size}",
    descriptions=(
        "{attr_l} {noun_l} in {material_l} for {audience}.",
        "Built by {brand} for {audience}, this {attr_l} {noun_l} uses {material_l}.",
    ),
    price=(40.0, 0.55),
    leaves=(
        leaf(
            "Tents",
            "Dome Tent|Backpacking Tent|Pop-Up Tent|Camping Tent",
            comps="Sleeping Bags|Camp Lighting",
            attrs="Waterproof|Ultralight|Instant-Setup|4-Season",
            mats="Ripstop Nylon|Polyester|Aluminum-Pole",
            sizes="2-Person|4-Person|6-Person",
            price=3.0,
        ),
        leaf(
            "Sleeping Bags",
            "Sleeping Bag|Sleeping Pad|Camping Pillow",
            comps="Tents|Camp Lighting",
            attrs="Lightweight|Insulated|Compact|Self-Inflating",
            mats="Down|Synthetic Fill|Fleece",
            sizes="20 F Rated|40 F Rated|Regular|Long",
            price=1.5,
        ),
        leaf(
            "Backpacks",
            "Hiking Backpack|Daypack|Hydration Pack",
            comps="Camp Kitchen",
            attrs="Ventilated|Waterproof|Lightweight|Adjustable",
            mats="Ripstop Nylon|Cordura|Mesh",
            sizes="20 L|35 L|50 L|65 L",
            price=2.0,
        ),
        leaf(
            "Camp Lighting",
            "Headlamp|Camping Lantern|Flashlight",
            comps="Tents",
            attrs="Rechargeable|Waterproof|Bright|Solar",
            mats="LED|Aluminum|ABS",
            sizes="300 Lumens|1000 Lumens|2-Pack",
            price=0.6,
        ),
        leaf(
            "Camp Kitchen",
            "Camping Stove|Cookset|Water Bottle|Camp Mug",
            comps="Backpacks",
            attrs="Portable|Lightweight|Collapsible|Insulated",
            mats="Titanium|Stainless Steel|Aluminum",
            sizes="1 L|Set of 4|750 ml",
            price=0.8,
        ),
    ),
)

TOYS = department(
    name="Toys",
    path="Toys & Games",
    brands="Brickwell|Tiny Tinker|Playmoor|Wonderbox|Starling Games|Little Oak",
    audiences="kids ages 3 and up|kids ages 6 and up|family game night|teens and adults",
    title="{brand} {attr} {material} {noun}, {size}",
    descriptions=(
        "{attr_l} {noun_l} with {a_material} theme for {audience}.",
        "{brand}'s {attr_l} {noun_l} brings hours of play to {audience}.",
    ),
    price=(20.0, 0.5),
    leaves=(
        leaf(
            "Building Sets",
            "Building Blocks Set|Magnetic Tiles|Construction Kit|Marble Run",
            comps="Arts & Crafts",
            attrs="Creative|STEM|Colorful|Classic",
            mats="Castle|Space Station|City|Dinosaur|Race Track",
            sizes="100 Pieces|250 Pieces|500 Pieces",
            price=1.5,
        ),
        leaf(
            "Board Games",
            "Strategy Board Game|Family Board Game|Card Game|Party Game|Cooperative Board Game",
            comps="Puzzles",
            attrs="Family|Strategy|Fast-Paced|Cooperative",
            mats="Fantasy|Space|Farm|Pirate|Detective",
            sizes="for 2-4 Players|for 2-6 Players|Ages 8+",
        ),
        leaf(
            "Puzzles",
            "Jigsaw Puzzle|3D Puzzle|Brain Teaser Set",
            comps="Board Games",
            attrs="Challenging|Relaxing|Colorful|Vintage",
            mats="Mountain Lake|City Skyline|Wildlife|Ocean Reef|Night Sky",
            sizes="500 Pieces|1000 Pieces|1500 Pieces",
            price=0.8,
        ),
        leaf(
            "Plush Toys",
            "Teddy Bear|Plush Bunny|Stuffed Dinosaur|Plush Unicorn",
            attrs="Soft|Cuddly|Huggable|Washable",
            mats="Classic Brown|Pastel|Rainbow|Woodland",
            sizes="8-inch|12-inch|18-inch",
            price=0.8,
        ),
        leaf(
            "Outdoor Play",
            "Kids Scooter|Water Blaster|Kite|Bubble Machine|Sandbox Toy Set",
            attrs="Sturdy|Lightweight|Foldable|Splash-Proof",
            mats="Ocean|Jungle|Rocket|Summer",
            sizes="Ages 3+|Ages 5+|Ages 8+",
            price=1.3,
        ),
        leaf(
            "Arts & Crafts",
            "Craft Kit|Watercolor Set|Modeling Clay|Bead Kit|Sticker Book",
            comps="Building Sets",
            attrs="Creative|Non-Toxic|Washable|Beginner",
            mats="Unicorn|Ocean Animals|Galaxy|Jungle",
            sizes="Ages 4+|Ages 6+|Ages 8+",
            price=0.7,
        ),
    ),
)

BOOKS = department(
    name="Books",
    path="Books",
    brands="Harbor Lane Press|Bluefield Books|Quillstone|Meridian House|Paper Lantern",
    sizes="Paperback|Hardcover|Kindle Edition",
    audiences="weekend reading|book clubs|curious readers|gift giving|long journeys",
    title="{material}: A {attr} {noun} ({size})",
    descriptions=(
        "{material} is {a_attr} {noun_l} from {brand}, perfect for {audience}.",
        "{attr_l} {noun_l} that readers call hard to put down; a favourite for {audience}.",
    ),
    price=(14.0, 0.3),
    leaves=(
        leaf(
            "Mystery & Thriller",
            "Mystery Novel|Psychological Thriller|Detective Novel|Crime Thriller",
            attrs="Gripping|Twisty|Atmospheric|Page-Turning",
            mats="The Silent Harbor|Death at Low Tide|The Glass Witness|A Cold Inheritance|The Last Alibi"
            "|Midnight on Carrow Street",
        ),
        leaf(
            "Science Fiction & Fantasy",
            "Space Opera|Fantasy Novel|Dystopian Novel|Epic Fantasy",
            attrs="Epic|Mind-Bending|Sweeping|Imaginative",
            mats="The Iron Constellation|Children of the Ember Moon|Starfall Protocol|The Dragon's Ledger"
            "|Echoes of Kepler",
        ),
        leaf(
            "Romance",
            "Romance Novel|Romantic Comedy|Historical Romance",
            attrs="Heartwarming|Swoon-Worthy|Witty|Tender",
            mats="Summer at Willow Bay|The Wedding Planner's Secret|Letters to Juniper|Love in Lisbon",
        ),
        leaf(
            "Cookbooks",
            "Cookbook|Baking Book|Vegetarian Cookbook",
            attrs="Practical|Inspiring|Family-Friendly|Seasonal",
            mats="Weeknight Suppers|The Sourdough Year|Plants on a Plate|One-Pan Dinners|Salt and Citrus",
            price=1.6,
        ),
        leaf(
            "Self-Help",
            "Self-Help Book|Productivity Guide|Mindfulness Guide|Personal Finance Guide",
            attrs="Practical|Uplifting|Research-Based|Concise",
            mats="Small Habits, Big Change|The Calm Mind|Money Made Simple|Deep Focus|Begin Again",
        ),
        leaf(
            "Children's Books",
            "Picture Book|Bedtime Story Book|Early Reader|Activity Book",
            attrs="Charming|Illustrated|Funny|Gentle",
            mats="The Sleepy Little Fox|Milo and the Moon|Ten Brave Ducklings|A Hat for Hazel",
            price=0.7,
        ),
    ),
)
